//! What consumer plugins keep through their capabilities: a key-value store and counters per
//! (campaign, role), the campaign's live statistics, history rows, and the email and push
//! sends already made per event.
//!
//! A plugin's writes are applied by [`Store::commit_effects`] in one transaction, together
//! with the consumer group's processed mark for the event: a failed attempt changes nothing,
//! and a re-delivered event that was already applied is not applied twice.

use std::collections::{BTreeMap, HashSet};

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

/// What the earlier events of a batch wrote to one plugin scope's kv store and counters, not
/// yet committed: a later event of the batch reads them as if they were (its consumer group
/// commits the batch's writes together).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Last value of each key written (`None`: deleted).
    pub kv: BTreeMap<String, Option<Vec<u8>>>,
    /// Sum of the increments of each counter (saturating: the commit itself refuses an
    /// overflowing sum).
    pub counters: BTreeMap<String, i64>,
}

impl Pending {
    /// Adds one more event's writes.
    pub fn absorb(&mut self, effects: &Effects) {
        for (key, value) in &effects.kv {
            self.kv.insert(key.clone(), value.clone());
        }
        for (key, delta) in &effects.counters {
            let sum = self.counters.entry(key.clone()).or_default();
            *sum = sum.saturating_add(*delta);
        }
    }
}

/// One event's plugin writes, for [`Store::commit_effects_batch`].
#[derive(Clone, Copy, Debug)]
pub struct PluginWrites<'a> {
    pub event_id: &'a str,
    pub scope: &'a Scope,
    pub effects: &'a Effects,
}

/// Adds `deltas` into `sums`, failing with [`StoreError::Overflow`] when a sum of one batch's
/// increments leaves the signed 64-bit range (`stored` then holds the sum so far).
fn add_up(
    table: &'static str,
    sums: &mut BTreeMap<String, i64>,
    deltas: &BTreeMap<String, i64>,
) -> Result<()> {
    for (key, delta) in deltas {
        let sum = sums.entry(key.clone()).or_default();
        *sum = sum
            .checked_add(*delta)
            .ok_or_else(|| StoreError::Overflow {
                table,
                key: key.clone(),
                stored: *sum,
                delta: *delta,
            })?;
    }
    Ok(())
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
    /// processed the event. See [`Self::commit_effects_batch`].
    pub async fn commit_effects(
        &self,
        group: &str,
        event_id: &str,
        scope: &Scope,
        effects: &Effects,
        now: i64,
    ) -> Result<bool> {
        let writes = PluginWrites {
            event_id,
            scope,
            effects,
        };
        let applied = self
            .commit_effects_batch(group, std::slice::from_ref(&writes), now)
            .await?;
        Ok(applied[0])
    }

    /// Applies the writes of several events' plugin calls (in order: a later kv write wins,
    /// counter and statistic increments add up) and marks the events processed for `group`,
    /// all in one transaction. Returns a flag per event it went through: `true` applied,
    /// `false` for an event the group had already processed (another member handled it, or
    /// its id came twice), which writes nothing and ends the answer there: the events after it
    /// read its writes as pending when they ran, so the caller runs them again. Fails with
    /// [`StoreError::Overflow`] when the sum would overflow a counter, whichever event's share
    /// does it (the caller then commits the events one by one to find it). A transaction the
    /// database rolls back to break a deadlock (two events of one campaign adding their first
    /// counters at once, on MySQL) is run again.
    pub async fn commit_effects_batch(
        &self,
        group: &str,
        writes: &[PluginWrites<'_>],
        now: i64,
    ) -> Result<Vec<bool>> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            match self.try_commit_effects(group, writes, now).await {
                Ok(Some(applied)) => return Ok(applied),
                // Another member marked one of the events meanwhile: look again.
                Ok(None) if attempt < ATTEMPTS => attempt += 1,
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::debug!(group, attempt, error = %e, "plugin writes retried");
                    let pause = rand::random_range(1..=10 * u64::from(attempt));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    attempt += 1;
                }
                Ok(None) => return Err(StoreError::Contended(group.to_owned())),
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of [`Self::commit_effects_batch`]; `None` when the processed marks changed
    /// under it.
    async fn try_commit_effects(
        &self,
        group: &str,
        writes: &[PluginWrites<'_>],
        now: i64,
    ) -> Result<Option<Vec<bool>>> {
        let ids: Vec<&str> = writes.iter().map(|w| w.event_id).collect();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        // Usually none was processed before: mark them all at once and count.
        let mut writes = writes;
        let mut done_at = None;
        if self.mark_processed_in(&mut tx, group, &ids, now).await? != ids.len() as u64 {
            tx.rollback().await?;
            // The first event processed already (or given twice): the ones before it are
            // applied; it counts as done; the later ones read its writes as pending and must
            // run again on what is committed.
            let done = self.processed_among(group, &ids).await?;
            let mut seen = HashSet::new();
            let first = ids
                .iter()
                .position(|id| done.contains(*id) || !seen.insert(*id))
                .unwrap_or(ids.len());
            writes = &writes[..first];
            done_at = Some(first);
            tx = self.pool.begin().await?;
            if self
                .mark_processed_in(&mut tx, group, &ids[..first], now)
                .await?
                != first as u64
            {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let mut applied = vec![true; writes.len()];
        if let Some(first) = done_at
            && first < ids.len()
        {
            applied.push(false);
        }
        let mut kv: BTreeMap<(&Scope, &str), Option<&Vec<u8>>> = BTreeMap::new();
        let mut counters: BTreeMap<&Scope, BTreeMap<String, i64>> = BTreeMap::new();
        let mut stats: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
        let mut history: Vec<&HistoryEntry> = Vec::new();
        for w in writes {
            for (key, value) in &w.effects.kv {
                kv.insert((w.scope, key.as_str()), value.as_ref());
            }
            let sums = counters.entry(w.scope).or_default();
            add_up("plugin_counters", sums, &w.effects.counters)?;
            let sums = stats.entry(w.scope.campaign_id.as_str()).or_default();
            add_up("campaign_stats", sums, &w.effects.stats)?;
            history.extend(&w.effects.history);
        }
        let set_kv = self.dialect.upsert(
            "plugin_kv",
            &["campaign_id", "role", "k", "v"],
            &["campaign_id", "role", "k"],
            "v",
            false,
        );
        for ((scope, key), value) in kv {
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
        for (scope, sums) in &counters {
            self.check_sums(&mut tx, "plugin_counters", "k", "n", scope, sums)
                .await?;
            for (key, delta) in sums {
                sqlx::query(&self.sql(&add_counter))
                    .bind(&scope.campaign_id)
                    .bind(&scope.role)
                    .bind(key)
                    .bind(*delta)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let add_stat = self.dialect.upsert(
            "campaign_stats",
            &["campaign_id", "name", "value"],
            &["campaign_id", "name"],
            "value",
            true,
        );
        for (campaign_id, sums) in &stats {
            let scope = Scope {
                campaign_id: (*campaign_id).to_owned(),
                role: String::new(),
            };
            self.check_sums(&mut tx, "campaign_stats", "name", "value", &scope, sums)
                .await?;
            for (name, delta) in sums {
                sqlx::query(&self.sql(&add_stat))
                    .bind(campaign_id)
                    .bind(name)
                    .bind(*delta)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        self.record_history_in(&mut tx, &history, now).await?;
        tx.commit().await?;
        Ok(Some(applied))
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
        let _turn = self.write_turn().await;
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
