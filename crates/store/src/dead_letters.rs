//! Which dead letters an operator settled (replayed or discarded), so that listings show the
//! open ones and the embedded log may purge the settled ones.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use super::{Result, Store};

/// How a dead letter was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Settlement {
    /// Sent back to its original topic, for the group that failed it.
    Replayed,
    /// Dropped by an operator: nobody handles it.
    Discarded,
}

impl Settlement {
    fn as_str(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::Discarded => "discarded",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "replayed" {
            Self::Replayed
        } else {
            Self::Discarded
        }
    }
}

/// A dead letter's settlement: how, by whom (a credential's name or `cli`), when (epoch ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Settled {
    pub outcome: Settlement,
    pub actor: String,
    pub at_ms: i64,
}

/// Where a dead letter sits: its topic (a `.DLT` topic), partition and offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LetterPlace {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Store {
    /// Claims dead letters for a settlement, each with its event id: marks those no one
    /// settled before and returns their indexes in `letters` (a letter settled meanwhile by
    /// another operator or host is not claimed twice).
    pub async fn settle_dead_letters(
        &self,
        letters: &[(LetterPlace, String)],
        settled: &Settled,
    ) -> Result<Vec<usize>> {
        let sql = self.dialect.insert_ignore(
            "dead_letters_settled (topic, dlt_partition, dlt_offset, event_id, outcome, actor, \
             at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        let sql = self.sql(&sql);
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let mut claimed = Vec::new();
        for (i, (place, event_id)) in letters.iter().enumerate() {
            let marked = sqlx::query(&sql)
                .bind(&place.topic)
                .bind(place.partition)
                .bind(place.offset)
                .bind(event_id)
                .bind(settled.outcome.as_str())
                .bind(&settled.actor)
                .bind(settled.at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if marked > 0 {
                claimed.push(i);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Takes settlements back (a replay whose publish failed: its letters are open again).
    pub async fn unsettle_dead_letters(&self, letters: &[LetterPlace]) -> Result<()> {
        let sql = self.sql(
            "DELETE FROM dead_letters_settled WHERE topic = ? AND dlt_partition = ? AND \
             dlt_offset = ?",
        );
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        for place in letters {
            sqlx::query(&sql)
                .bind(&place.topic)
                .bind(place.partition)
                .bind(place.offset)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The settled dead letters of `topic`, by partition and offset, each with the event id it
    /// was settled for (a letter at the same place with another id, on a topic made anew, is
    /// not the one settled).
    pub async fn settled_dead_letters(
        &self,
        topic: &str,
    ) -> Result<HashMap<(i32, i64), (String, Settled)>> {
        let rows = sqlx::query(&self.sql(
            "SELECT dlt_partition, dlt_offset, event_id, outcome, actor, at_ms \
             FROM dead_letters_settled WHERE topic = ?",
        ))
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get(3)?;
                let settled = Settled {
                    outcome: Settlement::parse(&outcome),
                    actor: r.try_get(4)?,
                    at_ms: r.try_get(5)?,
                };
                Ok(((r.try_get(0)?, r.try_get(1)?), (r.try_get(2)?, settled)))
            })
            .collect()
    }

    /// Deletes settlement marks made before `before` (ms).
    pub async fn purge_settled_dead_letters(&self, before: i64) -> Result<u64> {
        self.purge_older("dead_letters_settled", "at_ms", before)
            .await
    }
}
