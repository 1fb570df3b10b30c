//! What the database keeps for admission: the embedded queue's durable record of admitted
//! requests (`admissions`), and each campaign's issue mark, the floor below which no admission
//! queue may fall.
//!
//! A row of `admissions` is written before its request is answered `202` and deleted by the
//! chunk transaction that handles the request (`issue_chunk`), so that at every moment an
//! admitted request is either a row here or a coupon (or, after a refusal past capacity, which
//! only a queue that lost its data can cause, neither and the user may ask again).

use sqlx::Row;

use super::{Result, Store, placeholders};
use crate::admission::{Floor, QueueItem};

/// Rows per `INSERT` statement of a group commit: 5 binds a row, well inside every engine's
/// limit on bind parameters (SQLite's 32,766, MySQL's and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 500;

/// One admitted request for the durable record.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionRow<'a> {
    pub campaign_id: &'a str,
    pub item: &'a QueueItem,
}

impl Store {
    /// Writes admitted requests, all in one transaction (a group commit: one write and, on
    /// SQLite, one fsync for however many requests arrived while the previous one ran). A
    /// request whose (campaign, position) is already written is skipped, so a write that is
    /// retried after an error whose outcome was unknown is harmless.
    pub async fn record_admissions(&self, rows: &[AdmissionRow<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.durable.begin().await?;
        for part in rows.chunks(ROWS_PER_STATEMENT) {
            let values = vec![placeholders(5); part.len()].join(", ");
            let insert = self.dialect.insert_ignore(&format!(
                "admissions (campaign_id, position, user_id, request_id, admitted_at) \
                 VALUES {values}"
            ));
            let sql = self.sql(&insert);
            let mut query = sqlx::query(&sql);
            for row in part {
                query = query
                    .bind(row.campaign_id)
                    .bind(row.item.position)
                    .bind(&row.item.user_id)
                    .bind(&row.item.request_id)
                    .bind(row.item.admitted_at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A campaign's recorded admissions not yet handled by a chunk, in position order. Rows of
    /// users who already hold a coupon (their chunk committed elsewhere) are deleted, not
    /// returned.
    pub async fn pending_admissions(&self, campaign_id: &str) -> Result<Vec<QueueItem>> {
        sqlx::query(&self.sql(
            "DELETE FROM admissions WHERE campaign_id = ? AND user_id IN \
             (SELECT user_id FROM coupons WHERE campaign_id = ?)",
        ))
        .bind(campaign_id)
        .bind(campaign_id)
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(&self.sql(
            "SELECT position, user_id, request_id, admitted_at FROM admissions \
             WHERE campaign_id = ? ORDER BY position",
        ))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let position: i64 = r.try_get(0)?;
                Ok(QueueItem {
                    id: position.to_string(),
                    position,
                    user_id: r.try_get(1)?,
                    request_id: r.try_get(2)?,
                    admitted_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Which of `users` hold a coupon of the campaign.
    pub async fn holders(
        &self,
        campaign_id: &str,
        users: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        if users.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "SELECT user_id FROM coupons WHERE campaign_id = ? AND user_id IN {}",
            placeholders(users.len())
        );
        let sql = self.sql(&sql);
        let mut query = sqlx::query(&sql).bind(campaign_id);
        for user in users {
            query = query.bind(user);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The campaign's issue mark: coupons issued and the highest position issued (zeros for
    /// a campaign not in the database). One primary-key read.
    pub async fn issue_mark(&self, campaign_id: &str) -> Result<Floor> {
        let row =
            sqlx::query(&self.sql("SELECT issued, last_position FROM campaigns WHERE id = ?"))
                .bind(campaign_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Floor {
                issued: r.try_get(0)?,
                last_position: r.try_get(1)?,
            },
            None => Floor::default(),
        })
    }
}

/// Deletes the durable admission rows of a chunk's items inside its transaction.
pub(super) async fn delete_handled(
    store: &Store,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    campaign_id: &str,
    positions: &[i64],
) -> Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "DELETE FROM admissions WHERE campaign_id = ? AND position IN {}",
        placeholders(positions.len())
    );
    let sql = store.sql(&sql);
    let mut query = sqlx::query(&sql).bind(campaign_id);
    for p in positions {
        query = query.bind(*p);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}
