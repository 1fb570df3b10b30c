//! The audit log: every change made on the admin plane or applied from a campaign file, with
//! who made it, when, what it changed and digests of the document before and after.

use serde::Serialize;
use sqlx::Row;

use super::{Result, Store};

/// Longest `detail` kept; a longer one is cut (at a character boundary).
const DETAIL_MAX: usize = 1024;

/// One change. `before_sha256`/`after_sha256` are the hex SHA-256 of the document before and
/// after (a campaign's file, a user's profile as JSON), `None` where there was none.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Increasing; the paging cursor.
    pub id: i64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The credential's name, `file` (the campaign folder) or `cli`.
    pub actor: String,
    /// `campaign.put`, `campaign.delete`, `campaign.file`, `campaign.file_removed`,
    /// `user.put`, `users.put`, `dead_letter.replay`, `dead_letter.discard`.
    pub action: String,
    /// What was changed: a campaign id, a user id, a topic.
    pub target: String,
    pub before_sha256: Option<String>,
    pub after_sha256: Option<String>,
    /// A short description (plugin versions, counts); never a secret or personal data.
    pub detail: Option<String>,
}

/// Which entries [`Store::audit_page`] returns.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Only entries at or after this time (ms).
    pub since_ms: Option<i64>,
}

impl Store {
    /// Records one change; `id` and, when 0, `at_ms` are filled in.
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        let at = if entry.at_ms > 0 {
            entry.at_ms
        } else {
            firstcome_core::clock::now_ms()
        };
        let detail = entry
            .detail
            .as_deref()
            .map(|d| firstcome_core::bounded::cut(d, DETAIL_MAX).into_owned());
        let sql = self.sql(
            "INSERT INTO audit_log (at_ms, actor, action, target, before_sha256, after_sha256, \
             detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        let _turn = self.write_turn().await;
        sqlx::query(&sql)
            .bind(at)
            .bind(firstcome_core::bounded::cut(&entry.actor, 64).into_owned())
            .bind(firstcome_core::bounded::cut(&entry.action, 64).into_owned())
            .bind(firstcome_core::bounded::cut(&entry.target, 255).into_owned())
            .bind(&entry.before_sha256)
            .bind(&entry.after_sha256)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` entries matching `filter`, newest first, older than `before_id` when
    /// given (the previous page's last `id`).
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let mut sql = String::from(
            "SELECT id, at_ms, actor, action, target, before_sha256, after_sha256, detail \
             FROM audit_log WHERE 1 = 1",
        );
        let mut texts = Vec::new();
        let mut numbers = Vec::new();
        for (column, value) in [
            ("actor", &filter.actor),
            ("action", &filter.action),
            ("target", &filter.target),
        ] {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                texts.push(value.clone());
            }
        }
        if let Some(since) = filter.since_ms {
            sql.push_str(" AND at_ms >= ?");
            numbers.push(since);
        }
        if let Some(before) = before_id {
            sql.push_str(" AND id < ?");
            numbers.push(before);
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit.clamp(1, 1000)));
        let sql = self.sql(&sql);
        let mut query = sqlx::query(&sql);
        for text in &texts {
            query = query.bind(text);
        }
        for number in numbers {
            query = query.bind(number);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    before_sha256: r.try_get(5)?,
                    after_sha256: r.try_get(6)?,
                    detail: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Deletes entries recorded before `before_ms`; returns how many.
    pub async fn purge_audit(&self, before_ms: i64) -> Result<u64> {
        let sql = self.sql("DELETE FROM audit_log WHERE at_ms < ?");
        let _turn = self.write_turn().await;
        let done = sqlx::query(&sql)
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
