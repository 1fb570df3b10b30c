//! Tables of the embedded event bus: a gapless log per topic, consumer-group offsets held
//! under a lease, processed event ids for dedupe, and the history the built-in consumer keeps.

use sqlx::Row;

use super::{Result, Store};
use firstcome_core::event::Message;

/// One message of the embedded log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub topic: String,
    pub offset: i64,
    pub message: Message,
    pub created_at: i64,
}

/// One issuance as the history consumer recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub event_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub coupon_id: String,
    pub coupon_code: String,
    pub issued_at: i64,
    pub handled_by: String,
    /// When the consumer recorded it (0 on entries not yet written).
    pub recorded_at: i64,
}

impl Store {
    /// Appends messages to a topic. The topic row is locked (an UPDATE) for the length of the
    /// transaction, so offsets are gapless and become visible in order: a reader that has seen
    /// offset n never later finds a smaller one appear. Returns the offset of the last message
    /// (the topic's new head); the first is `head - messages.len() + 1`.
    pub async fn append_log(&self, topic: &str, messages: &[Message], now: i64) -> Result<i64> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let ensure = self
            .dialect
            .insert_ignore("bus_topics (topic, head) VALUES (?, 0)");
        sqlx::query(&self.sql(&ensure))
            .bind(topic)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&self.sql("UPDATE bus_topics SET head = head + ? WHERE topic = ?"))
            .bind(messages.len() as i64)
            .bind(topic)
            .execute(&mut *tx)
            .await?;
        let head: i64 = sqlx::query(&self.sql("SELECT head FROM bus_topics WHERE topic = ?"))
            .bind(topic)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let mut offset = head - messages.len() as i64 + 1;
        // 100 rows (700 parameters) per statement: one round trip instead of one per message,
        // well inside every engine's parameter limit.
        for chunk in messages.chunks(100) {
            let rows = vec![super::placeholders(7); chunk.len()].join(", ");
            let insert = format!(
                "INSERT INTO event_log (topic, log_offset, event_id, event_key, payload, headers, \
                 created_at) VALUES {rows}"
            );
            let insert = self.sql(&insert);
            let mut query = sqlx::query(&insert);
            for m in chunk {
                query = query
                    .bind(topic)
                    .bind(offset)
                    .bind(&m.event_id)
                    .bind(&m.key)
                    .bind(&m.payload)
                    .bind(serde_json::to_string(&m.headers).expect("headers serialise"))
                    .bind(now);
                offset += 1;
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(head)
    }

    /// Messages of a topic from `from` on, in offset order.
    pub async fn read_log(&self, topic: &str, from: i64, limit: i64) -> Result<Vec<LogRecord>> {
        let rows = sqlx::query(&self.sql(
            "SELECT log_offset, event_id, event_key, payload, headers, created_at FROM event_log \
             WHERE topic = ? AND log_offset >= ? ORDER BY log_offset LIMIT ?",
        ))
        .bind(topic)
        .bind(from)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let headers = super::text(r, 4)?;
                Ok(LogRecord {
                    topic: topic.to_owned(),
                    offset: r.try_get(0)?,
                    message: Message {
                        event_id: r.try_get(1)?,
                        key: r.try_get(2)?,
                        payload: super::text(r, 3)?,
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                    },
                    created_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Deletes log entries written before `before`; of the dead-letter topics (`*.DLT`) only
    /// the letters an operator settled (a dead letter is kept until it is replayed or
    /// discarded, however old). Returns how many. Offsets stay as they were: a group behind the retention continues at
    /// the oldest entry left.
    pub async fn purge_log(&self, before: i64) -> Result<u64> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(&self.sql(
            "DELETE FROM event_log WHERE created_at < ? AND (topic NOT LIKE '%.DLT' OR \
                 EXISTS (SELECT 1 FROM dead_letters_settled s WHERE s.topic = event_log.topic \
                 AND s.dlt_partition = 0 AND s.dlt_offset = event_log.log_offset))",
        ))
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The offset of the last message of a topic (0 when empty).
    pub async fn log_head(&self, topic: &str) -> Result<i64> {
        let row = sqlx::query(&self.sql("SELECT head FROM bus_topics WHERE topic = ?"))
            .bind(topic)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Takes or renews the lease on a group's position in a topic; returns the next offset to
    /// read when this owner holds the lease, `None` when another live owner does.
    pub async fn lease_group(
        &self,
        group: &str,
        topic: &str,
        owner: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<i64>> {
        let _turn = self.write_turn().await;
        let ensure = self
            .dialect
            .insert_ignore("consumer_offsets (group_id, topic, next_offset) VALUES (?, ?, 1)");
        sqlx::query(&self.sql(&ensure))
            .bind(group)
            .bind(topic)
            .execute(&self.pool)
            .await?;
        sqlx::query(&self.sql(
            "UPDATE consumer_offsets SET owner = ?, lease_until = ? WHERE group_id = ? \
             AND topic = ? AND (owner = ? OR owner IS NULL OR lease_until < ?)",
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(group)
        .bind(topic)
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // Read back rather than trust rows_affected: MySQL reports 0 for an unchanged row.
        let row = sqlx::query(&self.sql(
            "SELECT owner, next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ?",
        ))
        .bind(group)
        .bind(topic)
        .fetch_one(&self.pool)
        .await?;
        let holder: Option<String> = row.try_get(0)?;
        Ok((holder.as_deref() == Some(owner))
            .then(|| row.try_get(1))
            .transpose()?)
    }

    /// Moves the group past `offset` and renews the lease, if this owner still holds it, and
    /// records the `handled` event ids as processed by the group (a dead-lettered event is
    /// not, so that a replay reaches the group again), in one transaction. Returns false when
    /// the lease was lost: the caller stops and re-leases.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        owner: &str,
        offset: i64,
        handled: &[&str],
        now: i64,
        lease_ms: i64,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&self.sql(
            "UPDATE consumer_offsets SET next_offset = ?, lease_until = ? WHERE group_id = ? \
             AND topic = ? AND owner = ?",
        ))
        .bind(offset + 1)
        .bind(now + lease_ms)
        .bind(group)
        .bind(topic)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        self.mark_processed_in(&mut tx, group, handled, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that a group handled these events (consumer-side dedupe), in one transaction.
    pub async fn mark_processed(&self, group: &str, event_ids: &[&str], now: i64) -> Result<()> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        self.mark_processed_in(&mut tx, group, event_ids, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Which of these event ids the group has handled already.
    pub async fn processed_among(
        &self,
        group: &str,
        event_ids: &[&str],
    ) -> Result<std::collections::HashSet<String>> {
        let mut done = std::collections::HashSet::new();
        for chunk in event_ids.chunks(500) {
            let q = format!(
                "SELECT event_id FROM processed_events WHERE group_id = ? AND event_id IN {}",
                super::placeholders(chunk.len())
            );
            let sql = self.sql(&q);
            let mut query = sqlx::query(&sql).bind(group);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                done.insert(row.try_get(0)?);
            }
        }
        Ok(done)
    }

    /// Marks events processed by a group inside a transaction (ids already marked are left
    /// as they are), 200 per multi-row statement. Returns how many marks it added.
    pub(super) async fn mark_processed_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        group: &str,
        event_ids: &[&str],
        now: i64,
    ) -> Result<u64> {
        let mut added = 0;
        for chunk in event_ids.chunks(200) {
            let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
            let insert = self.dialect.insert_ignore(&format!(
                "processed_events (group_id, event_id, processed_at) VALUES {rows}"
            ));
            let sql = self.sql(&insert);
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(group).bind(*id).bind(now);
            }
            added += query.execute(&mut **tx).await?.rows_affected();
        }
        Ok(added)
    }

    /// Gives a group's lease up (clean shutdown) so another host takes over at once.
    pub async fn release_group(&self, group: &str, topic: &str, owner: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(&self.sql(
            "UPDATE consumer_offsets SET owner = NULL, lease_until = NULL WHERE group_id = ? \
             AND topic = ? AND owner = ?",
        ))
        .bind(group)
        .bind(topic)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The next offset a group will read (1 when it has read nothing).
    pub async fn group_position(&self, group: &str, topic: &str) -> Result<i64> {
        let row = sqlx::query(
            &self.sql("SELECT next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ?"),
        )
        .bind(group)
        .bind(topic)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(1))
    }

    /// Records issuances in the history, once per event id (an id recorded before is left as
    /// it is), inside a plugin's transaction, 100 per multi-row statement.
    pub(super) async fn record_history_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        entries: &[&HistoryEntry],
        now: i64,
    ) -> Result<()> {
        for chunk in entries.chunks(100) {
            let rows = vec![super::placeholders(8); chunk.len()].join(", ");
            let insert = self.dialect.insert_ignore(&format!(
                "history (event_id, campaign_id, user_id, coupon_id, coupon_code, issued_at, \
                 recorded_at, handled_by) VALUES {rows}"
            ));
            let sql = self.sql(&insert);
            let mut query = sqlx::query(&sql);
            for entry in chunk {
                query = query
                    .bind(&entry.event_id)
                    .bind(&entry.campaign_id)
                    .bind(&entry.user_id)
                    .bind(&entry.coupon_id)
                    .bind(&entry.coupon_code)
                    .bind(entry.issued_at)
                    .bind(now)
                    .bind(&entry.handled_by);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    pub async fn history_of_campaign(&self, campaign_id: &str) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(&self.sql(
            "SELECT event_id, campaign_id, user_id, coupon_id, coupon_code, issued_at, handled_by, \
             recorded_at FROM history WHERE campaign_id = ? ORDER BY id",
        ))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryEntry {
                    event_id: r.try_get(0)?,
                    campaign_id: r.try_get(1)?,
                    user_id: r.try_get(2)?,
                    coupon_id: r.try_get(3)?,
                    coupon_code: r.try_get(4)?,
                    issued_at: r.try_get(5)?,
                    handled_by: r.try_get(6)?,
                    recorded_at: r.try_get(7)?,
                })
            })
            .collect()
    }
}
