//! What the database keeps for admission: the embedded queue's durable record of admitted
//! requests (`admissions`), and each campaign's issue mark, the floor below which no admission
//! queue may fall.
//!
//! A row of `admissions` is written (a group commit) before its request is answered `202`;
//! once every request of the campaign up to a position is handled (its chunk committed), the
//! rows below it are deleted, about once a second. A row of a user who holds a coupon may
//! therefore outlive its chunk (a crash before the delete): the rebuild skips those, the
//! coupon being the database's word.
//!
//! On SQLite the record is a database file of its own, written by nothing but the group
//! commits (see [`Store`]'s `record`); on MySQL and PostgreSQL a table of the main database.

use sqlx::Row;

use super::{Result, Store, placeholders};
use firstcome_core::queue::{Floor, QueueItem};

/// Rows per `INSERT` statement of a group commit: 5 binds a row, well inside every engine's
/// limit on bind parameters (SQLite's 32,766, MySQL's and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 500;

/// One admitted request for the durable record.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionRow<'a> {
    /// The campaign the request was admitted to.
    pub campaign_id: &'a str,
    /// The request at its place in line (position, user, request id, time in epoch ms).
    pub item: &'a QueueItem,
}

impl Store {
    /// One group commit of the admission record through the pool: writes `admitted` at once
    /// (one write for however many requests arrived while the previous commit ran). On an
    /// SQLite file the embedded queue's writer commits on a connection of its own instead.
    /// A row already written is skipped, so a commit retried after an error whose outcome
    /// was unknown is harmless.
    pub async fn record_admissions(&self, admitted: &[AdmissionRow<'_>]) -> Result<()> {
        if admitted.is_empty() {
            return Ok(());
        }
        if admitted.len() <= ROWS_PER_STATEMENT {
            return self.insert_admissions(&self.record, admitted).await;
        }
        let mut tx = self.record.begin().await?;
        for part in admitted.chunks(ROWS_PER_STATEMENT) {
            self.insert_admissions(&mut *tx, part).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a campaign's recorded admissions below `position`: every one of them handled
    /// (its chunk committed).
    pub async fn forget_admissions_below(&self, campaign_id: &str, position: i64) -> Result<()> {
        sqlx::query(&self.sql("DELETE FROM admissions WHERE campaign_id = ? AND position < ?"))
            .bind(campaign_id)
            .bind(position)
            .execute(&self.record)
            .await?;
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
            Some(r) => {
                let issued = r.try_get(0)?;
                Floor {
                    issued,
                    last_position: r.try_get(1)?,
                    campaign_issued: issued,
                }
            }
            None => Floor::default(),
        })
    }

    /// The issue mark of each bucket of a campaign split into `buckets` (indexed by bucket;
    /// a position's bucket is `(position - 1) % buckets`, see
    /// [`firstcome_core::queue::bucket_of_position`]): coupons issued from it and the highest
    /// position it issued. One grouped read of the campaign's coupons (primary-key order).
    pub async fn issue_marks(&self, campaign_id: &str, buckets: u32) -> Result<Vec<Floor>> {
        let buckets = buckets.max(1);
        // The bucket count is a number the campaign file checked (1..=64), written into the
        // text so that the grouping expression is the same one in every engine.
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT (position - 1) % {buckets}, COUNT(*), MAX(position) FROM coupons \
             WHERE campaign_id = ? GROUP BY (position - 1) % {buckets}"
        )))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        let mut floors = vec![Floor::default(); buckets as usize];
        for r in rows {
            let bucket: i64 = r.try_get(0)?;
            if let Some(f) = usize::try_from(bucket).ok().and_then(|b| floors.get_mut(b)) {
                *f = Floor {
                    issued: r.try_get(1)?,
                    last_position: r.try_get(2)?,
                    campaign_issued: 0,
                };
            }
        }
        let campaign_issued = floors.iter().map(|f| f.issued).sum();
        for f in &mut floors {
            f.campaign_issued = campaign_issued;
        }
        Ok(floors)
    }
}
