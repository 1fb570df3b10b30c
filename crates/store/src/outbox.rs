//! The transactional outbox: rows written by the chunk transaction, published afterwards.

use sqlx::{Any, Row, Transaction};

use super::{Dialect, Result, Store, placeholders};

/// One event waiting to be (or already) published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Stable across re-sends: consumers drop duplicates by it.
    pub event_id: String,
    pub topic: String,
    /// Partitioning key (the user id): one user's events stay in order.
    pub key: String,
    /// The JSON envelope.
    pub payload: String,
    pub created_at: i64,
}

/// Rows claimed by one relay pass. On PostgreSQL and MySQL they are row-locked
/// (`FOR UPDATE SKIP LOCKED`) inside the open transaction until [`complete`](Self::complete)
/// or [`abandon`](Self::abandon); on SQLite they carry a lease (`claimed_until`).
#[derive(Debug)]
pub struct OutboxClaim {
    tx: Option<Transaction<'static, Any>>,
    store: Store,
    pub events: Vec<OutboxEvent>,
}

impl OutboxClaim {
    /// The bus acknowledged the events: mark them published.
    pub async fn complete(mut self, now: i64) -> Result<()> {
        let ids: Vec<&str> = self.events.iter().map(|e| e.event_id.as_str()).collect();
        match self.tx.take() {
            Some(mut tx) => {
                self.store.mark_published_in(&mut tx, &ids, now).await?;
                tx.commit().await?;
            }
            None => self.store.mark_published(&ids, now).await?,
        }
        Ok(())
    }

    /// Publishing failed: the rows stay unpublished for a later pass.
    pub async fn abandon(mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await?;
        }
        Ok(())
    }
}

fn event_from_row(r: &sqlx::any::AnyRow) -> Result<OutboxEvent> {
    Ok(OutboxEvent {
        event_id: r.try_get(0)?,
        topic: r.try_get(1)?,
        key: r.try_get(2)?,
        payload: super::text(r, 3)?,
        created_at: r.try_get(4)?,
    })
}

impl Store {
    pub(super) async fn insert_outbox(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: &[OutboxEvent],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let rows = vec![placeholders(5); events.len()].join(", ");
        let q = format!(
            "INSERT INTO outbox (event_id, topic, event_key, payload, created_at) VALUES {rows}"
        );
        let sql = self.sql(&q);
        let mut query = sqlx::query(&sql);
        for e in events {
            query = query
                .bind(&e.event_id)
                .bind(&e.topic)
                .bind(&e.key)
                .bind(&e.payload)
                .bind(e.created_at);
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }

    /// Marks events published; only ever called after the bus acknowledged them.
    pub async fn mark_published(&self, event_ids: &[&str], now: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        self.mark_published_in(&mut tx, event_ids, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_published_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        event_ids: &[&str],
        now: i64,
    ) -> Result<()> {
        for chunk in event_ids.chunks(500) {
            let q = format!(
                "UPDATE outbox SET published_at = ?, claimed_until = NULL \
                 WHERE published_at IS NULL AND event_id IN {}",
                placeholders(chunk.len())
            );
            let sql = self.sql(&q);
            let mut query = sqlx::query(&sql).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Claims up to `limit` unpublished rows created at or before `cutoff`, oldest first,
    /// so that no two relays hold the same row.
    pub async fn claim_unpublished(
        &self,
        cutoff: i64,
        limit: i64,
        now: i64,
        lease_ms: i64,
    ) -> Result<OutboxClaim> {
        match self.dialect {
            Dialect::MySql | Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                let rows = sqlx::query(&self.sql(
                    "SELECT event_id, topic, event_key, payload, created_at FROM outbox \
                     WHERE published_at IS NULL AND created_at <= ? ORDER BY id LIMIT ? \
                     FOR UPDATE SKIP LOCKED",
                ))
                .bind(cutoff)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let events = rows
                    .iter()
                    .map(event_from_row)
                    .collect::<Result<Vec<_>>>()?;
                Ok(OutboxClaim {
                    tx: Some(tx),
                    store: self.clone(),
                    events,
                })
            }
            Dialect::Sqlite => {
                // One UPDATE .. RETURNING is atomic under SQLite's single writer.
                let _turn = self.write_turn().await;
                let rows = sqlx::query(
                    "UPDATE outbox SET claimed_until = ?, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL \
                     AND created_at <= ? AND (claimed_until IS NULL OR claimed_until < ?) \
                     ORDER BY id LIMIT ?) \
                     RETURNING event_id, topic, event_key, payload, created_at",
                )
                .bind(now + lease_ms)
                .bind(cutoff)
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                let mut events = rows
                    .iter()
                    .map(event_from_row)
                    .collect::<Result<Vec<_>>>()?;
                events.sort_by_key(|e| e.created_at);
                Ok(OutboxClaim {
                    tx: None,
                    store: self.clone(),
                    events,
                })
            }
        }
    }

    /// Deletes published rows older than `before`; returns how many.
    pub async fn purge_published(&self, before: i64) -> Result<u64> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            &self.sql("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?"),
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Unpublished rows and the creation time of the oldest.
    pub async fn outbox_backlog(&self) -> Result<(i64, Option<i64>)> {
        let row =
            sqlx::query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Whether an event has been marked published (for tests and the CLI).
    pub async fn is_published(&self, event_id: &str) -> Result<Option<bool>> {
        let row = sqlx::query(&self.sql("SELECT published_at FROM outbox WHERE event_id = ?"))
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get::<Option<i64>, _>(0)?.is_some()))
            .transpose()
    }
}
