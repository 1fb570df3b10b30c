//! What the database keeps for admission: the embedded queue's durable record of admitted
//! requests (`admissions`), and each campaign's issue mark, the floor below which no admission
//! queue may fall.
//!
//! A row of `admissions` is written (a group commit) before its request is answered `202`,
//! and deleted by a later group commit once the request's chunk has committed. Between the
//! chunk's commit and that delete a crash leaves the row of a user who already holds a coupon:
//! the rebuild skips those (the coupon is the database's word) and deletes them.
//!
//! On SQLite the record is a database file of its own, written by nothing but the group
//! commits (see [`Store`]'s `record`); on MySQL and PostgreSQL a table of the main database.

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
    /// One group commit of the admission record, in one transaction: writes `admitted` (one
    /// write and, on SQLite, one fsync for however many requests arrived while the previous
    /// commit ran) and deletes `handled`, `(campaign, position)` of requests whose chunk has
    /// committed. A row already written is skipped, so a commit retried after an error whose
    /// outcome was unknown is harmless.
    pub async fn commit_admissions(
        &self,
        admitted: &[AdmissionRow<'_>],
        handled: &[(String, i64)],
    ) -> Result<()> {
        if admitted.is_empty() && handled.is_empty() {
            return Ok(());
        }
        // The common case, admissions that fit one statement and nothing to delete: one
        // statement is atomic on its own, and saves the round trips of BEGIN and COMMIT.
        if handled.is_empty() && admitted.len() <= ROWS_PER_STATEMENT {
            self.insert_admissions(&self.record, admitted).await?;
            return Ok(());
        }
        let mut tx = self.record.begin().await?;
        for part in admitted.chunks(ROWS_PER_STATEMENT) {
            self.insert_admissions(&mut *tx, part).await?;
        }
        let mut by_campaign: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
        for (campaign_id, position) in handled {
            by_campaign.entry(campaign_id).or_default().push(*position);
        }
        for (campaign_id, positions) in by_campaign {
            for part in positions.chunks(ROWS_PER_STATEMENT) {
                let delete = format!(
                    "DELETE FROM admissions WHERE campaign_id = ? AND position IN {}",
                    placeholders(part.len())
                );
                let sql = self.sql(&delete);
                let mut query = sqlx::query(&sql).bind(campaign_id);
                for position in part {
                    query = query.bind(*position);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// One multi-row `INSERT` of admissions, skipping rows already written.
    async fn insert_admissions<'c, E>(&self, executor: E, rows: &[AdmissionRow<'_>]) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let values = vec![placeholders(5); rows.len()].join(", ");
        let insert = self.dialect.insert_ignore(&format!(
            "admissions (campaign_id, position, user_id, request_id, admitted_at) VALUES {values}"
        ));
        let sql = self.sql(&insert);
        let mut query = sqlx::query(&sql);
        for row in rows {
            query = query
                .bind(row.campaign_id)
                .bind(row.item.position)
                .bind(&row.item.user_id)
                .bind(&row.item.request_id)
                .bind(row.item.admitted_at);
        }
        query.execute(executor).await?;
        Ok(())
    }

    /// A campaign's recorded admissions, in position order.
    pub async fn recorded_admissions(&self, campaign_id: &str) -> Result<Vec<QueueItem>> {
        let rows = sqlx::query(&self.sql(
            "SELECT position, user_id, request_id, admitted_at FROM admissions \
             WHERE campaign_id = ? ORDER BY position",
        ))
        .bind(campaign_id)
        .fetch_all(&self.record)
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
