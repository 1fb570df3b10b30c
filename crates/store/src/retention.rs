//! Deleting what is kept only for a while: de-duplication marks, the record of sends made per
//! event, history (when the operator limits it), the state of plugins of campaigns removed
//! long ago. Each purge deletes in batches, so that no statement holds its table for long.

use super::{Dialect, Result, Store};

/// Rows one statement deletes at most.
pub const PURGE_BATCH: u32 = 5_000;

impl Store {
    /// Deletes rows of `table` whose `column` (epoch ms) is below `before`, a batch at a time;
    /// returns how many.
    pub(super) async fn purge_older(&self, table: &str, column: &str, before: i64) -> Result<u64> {
        // One statement per engine: MySQL refuses LIMIT in an IN subquery but takes it on
        // DELETE; SQLite and PostgreSQL take it in a subquery of row ids.
        let sql = match self.dialect {
            Dialect::MySql => {
                format!("DELETE FROM {table} WHERE {column} < ? LIMIT {PURGE_BATCH}")
            }
            Dialect::Sqlite => format!(
                "DELETE FROM {table} WHERE rowid IN \
                 (SELECT rowid FROM {table} WHERE {column} < ? LIMIT {PURGE_BATCH})"
            ),
            Dialect::Postgres => format!(
                "DELETE FROM {table} WHERE ctid IN \
                 (SELECT ctid FROM {table} WHERE {column} < ? LIMIT {PURGE_BATCH})"
            ),
        };
        let sql = self.sql(&sql);
        let mut total = 0;
        loop {
            let done = {
                let _turn = self.write_turn().await;
                sqlx::query(&sql).bind(before).execute(&self.pool).await?
            };
            total += done.rows_affected();
            if done.rows_affected() < u64::from(PURGE_BATCH) {
                return Ok(total);
            }
        }
    }

    /// Deletes consumer groups' processed marks older than `before`.
    pub async fn purge_processed(&self, before: i64) -> Result<u64> {
        self.purge_older("processed_events", "processed_at", before)
            .await
    }

    /// Deletes the record of email and push sends made before `before`.
    pub async fn purge_deliveries(&self, before: i64) -> Result<u64> {
        self.purge_older("plugin_deliveries", "sent_at", before)
            .await
    }

    /// Deletes history rows recorded before `before`.
    pub async fn purge_history(&self, before: i64) -> Result<u64> {
        self.purge_older("history", "recorded_at", before).await
    }

    /// Deletes what plugins kept (kv values, counters, statistics) for campaigns removed
    /// before `before`; returns how many rows. The campaigns are read first, on their own, so
    /// that no delete holds locks on the campaigns table (InnoDB would lock the rows a
    /// subquery of a DELETE reads, against a campaign being applied meanwhile).
    pub async fn purge_removed_campaigns(&self, before: i64) -> Result<u64> {
        let ids: Vec<String> = sqlx::query_scalar(
            &self.sql("SELECT id FROM campaigns WHERE active = 0 AND updated_at < ?"),
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        let mut total = 0;
        for id in ids {
            for table in ["plugin_kv", "plugin_counters", "campaign_stats"] {
                let sql = format!("DELETE FROM {table} WHERE campaign_id = ?");
                let sql = self.sql(&sql);
                let _turn = self.write_turn().await;
                total += sqlx::query(&sql)
                    .bind(&id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
        }
        Ok(total)
    }
}
