//! What consumer plugins keep through their capabilities: a key-value store and counters per
//! (campaign, role), the campaign's live statistics, history rows, and the email and push
//! sends already made per event.
//!
//! A plugin's writes are applied by [`Store::commit_effects`] in one transaction, together
//! with the consumer group's processed mark for the event: a failed attempt changes nothing,
//! and a re-delivered event that was already applied is not applied twice.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Dialect, HistoryEntry, Result, Store, StoreError};

/// The writes of one successful plugin call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Final value of each key written (`None`: deleted).
    pub kv: BTreeMap<String, Option<Vec<u8>>>,
    /// Sum of the increments of each counter.
    pub counters: BTreeMap<String, i64>,
    /// Sum of the increments of each statistic.
    pub stats: BTreeMap<String, i64>,
    pub history: Vec<HistoryEntry>,
    /// The plugin asked for the statistics to be published.
    pub publish_stats: bool,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
            && self.counters.is_empty()
            && self.stats.is_empty()
            && self.history.is_empty()
    }
}

/// Where a plugin's state lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub campaign_id: String,
    pub role: String,
}

/// Fails with [`StoreError::Overflow`] if adding any delta to its stored value leaves the
/// signed 64-bit range. Checked here because the engines differ: SQLite turns an overflowing
/// sum into a float, PostgreSQL and MySQL fail the statement with an error that would be
/// retried as if the database were down.
fn overflow_of(
    table: &'static str,
    stored: &BTreeMap<String, i64>,
    deltas: &BTreeMap<String, i64>,
) -> Result<()> {
    for (key, delta) in deltas {
        let now = stored.get(key).copied().unwrap_or(0);
        if now.checked_add(*delta).is_none() {
            return Err(StoreError::Overflow {
                table,
                key: key.clone(),
                stored: now,
                delta: *delta,
            });
        }
    }
    Ok(())
}

impl Dialect {
    /// `INSERT ... ` that replaces `set` columns when the key exists; `add` makes the update
    /// add to the existing value instead.
    fn upsert(self, table: &str, columns: &[&str], key: &[&str], value: &str, add: bool) -> String {
        let cols = columns.join(", ");
        let marks = super::placeholders(columns.len());
        match self {
            Self::MySql => {
                let new = if add {
                    format!("{value} = {value} + VALUES({value})")
                } else {
                    format!("{value} = VALUES({value})")
                };
                format!("INSERT INTO {table} ({cols}) VALUES {marks} ON DUPLICATE KEY UPDATE {new}")
            }
            Self::Sqlite | Self::Postgres => {
                let new = if add {
                    format!("{value} = {table}.{value} + excluded.{value}")
                } else {
                    format!("{value} = excluded.{value}")
                };
                format!(
                    "INSERT INTO {table} ({cols}) VALUES {marks} ON CONFLICT ({}) DO UPDATE SET {new}",
                    key.join(", ")
                )
            }
        }
    }
}

impl Store {
    pub async fn kv_get(&self, scope: &Scope, key: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query(
            &self.sql("SELECT v FROM plugin_kv WHERE campaign_id = ? AND role = ? AND k = ?"),
        )
        .bind(&scope.campaign_id)
        .bind(&scope.role)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn kv_counter(&self, scope: &Scope, key: &str) -> Result<i64> {
        let row = sqlx::query(
            &self.sql("SELECT n FROM plugin_counters WHERE campaign_id = ? AND role = ? AND k = ?"),
        )
        .bind(&scope.campaign_id)
        .bind(&scope.role)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Applies a plugin's writes for `event_id` and marks the event processed for `group`,
    /// in one transaction. Returns `false` (and writes nothing) when the group had already
    /// processed the event. A transaction the database rolls back to break a deadlock (two
    /// events of one campaign adding their first counters at once, on MySQL) is run again.
    pub async fn commit_effects(
        &self,
        group: &str,
        event_id: &str,
        scope: &Scope,
        effects: &Effects,
        now: i64,
    ) -> Result<bool> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            match self
                .try_commit_effects(group, event_id, scope, effects, now)
                .await
            {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::debug!(%event_id, attempt, error = %e, "plugin writes retried");
                    let pause = rand::random_range(1..=10 * u64::from(attempt));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_commit_effects(
        &self,
        group: &str,
        event_id: &str,
        scope: &Scope,
        effects: &Effects,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let mark = self
            .dialect
            .insert_ignore("processed_events (group_id, event_id, processed_at) VALUES (?, ?, ?)");
        let marked = sqlx::query(&self.sql(&mark))
            .bind(group)
            .bind(event_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if marked.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let set_kv = self.dialect.upsert(
            "plugin_kv",
            &["campaign_id", "role", "k", "v"],
            &["campaign_id", "role", "k"],
            "v",
            false,
        );
        for (key, value) in &effects.kv {
            match value {
                Some(v) => {
                    sqlx::query(&self.sql(&set_kv))
                        .bind(&scope.campaign_id)
                        .bind(&scope.role)
                        .bind(key)
                        .bind(v.clone())
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    sqlx::query(
                        &self.sql(
                            "DELETE FROM plugin_kv WHERE campaign_id = ? AND role = ? AND k = ?",
                        ),
                    )
                    .bind(&scope.campaign_id)
                    .bind(&scope.role)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        let add_counter = self.dialect.upsert(
            "plugin_counters",
            &["campaign_id", "role", "k", "n"],
            &["campaign_id", "role", "k"],
            "n",
            true,
        );
        self.check_sums(
            &mut tx,
            "plugin_counters",
            "k",
            "n",
            scope,
            &effects.counters,
        )
        .await?;
        for (key, delta) in &effects.counters {
            sqlx::query(&self.sql(&add_counter))
                .bind(&scope.campaign_id)
                .bind(&scope.role)
                .bind(key)
                .bind(*delta)
                .execute(&mut *tx)
                .await?;
        }
        let add_stat = self.dialect.upsert(
            "campaign_stats",
            &["campaign_id", "name", "value"],
            &["campaign_id", "name"],
            "value",
            true,
        );
        self.check_sums(
            &mut tx,
            "campaign_stats",
            "name",
            "value",
            scope,
            &effects.stats,
        )
        .await?;
        for (name, delta) in &effects.stats {
            sqlx::query(&self.sql(&add_stat))
                .bind(&scope.campaign_id)
                .bind(name)
                .bind(*delta)
                .execute(&mut *tx)
                .await?;
        }
        for entry in &effects.history {
            self.record_history_in(&mut tx, entry, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Fails with [`StoreError::Overflow`] if adding `deltas` to a counter table would leave
    /// the signed 64-bit range. Reads the stored values locked until the transaction ends (on
    /// SQLite the transaction already holds the database's write lock: its first statement
    /// wrote the processed mark). `campaign_stats` is keyed by campaign only; the plugin
    /// tables by campaign and role.
    async fn check_sums(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        table: &'static str,
        key_column: &str,
        value_column: &str,
        scope: &Scope,
        deltas: &BTreeMap<String, i64>,
    ) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let keys = deltas.keys();
        let role_filter = if table == "campaign_stats" {
            ""
        } else {
            " AND role = ?"
        };
        let lock = if self.dialect == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let q = format!(
            "SELECT {key_column}, {value_column} FROM {table} WHERE campaign_id = ?{role_filter} \
             AND {key_column} IN {}{lock}",
            super::placeholders(keys.len())
        );
        let sql = self.sql(&q);
        let mut query = sqlx::query(&sql).bind(&scope.campaign_id);
        if !role_filter.is_empty() {
            query = query.bind(&scope.role);
        }
        for key in keys {
            query = query.bind(key);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        let stored = rows
            .iter()
            .map(|r| Ok((super::text(r, 0)?, r.try_get(1)?)))
            .collect::<Result<BTreeMap<String, i64>>>()?;
        overflow_of(table, &stored, deltas)
    }

    /// The campaign's statistics counters, by name.
    pub async fn campaign_stats(&self, campaign_id: &str) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query(
            &self.sql("SELECT name, value FROM campaign_stats WHERE campaign_id = ? ORDER BY name"),
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((super::text(r, 0)?, r.try_get(1)?)))
            .collect()
    }

    /// Whether a send was already made for this event (`target_hash`: the SHA-256 of the
    /// recipient and message, hex).
    pub async fn delivery_made(
        &self,
        event_id: &str,
        role: &str,
        channel: &str,
        target_hash: &str,
    ) -> Result<bool> {
        let row = sqlx::query(&self.sql(
            "SELECT 1 FROM plugin_deliveries WHERE event_id = ? AND role = ? AND channel = ? \
             AND target_hash = ?",
        ))
        .bind(event_id)
        .bind(role)
        .bind(channel)
        .bind(target_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    pub async fn record_delivery(
        &self,
        event_id: &str,
        role: &str,
        channel: &str,
        target_hash: &str,
        now: i64,
    ) -> Result<()> {
        let insert = self.dialect.insert_ignore(
            "plugin_deliveries (event_id, role, channel, target_hash, sent_at) VALUES (?, ?, ?, ?, ?)",
        );
        sqlx::query(&self.sql(&insert))
            .bind(event_id)
            .bind(role)
            .bind(channel)
            .bind(target_hash)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
