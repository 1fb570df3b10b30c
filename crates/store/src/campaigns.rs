//! Campaign rows: the database copy of each campaign file, plus its issued count.

use sqlx::Row;

use super::{Dialect, Result, Store, StoreError};
use firstcome_core::campaign::Campaign;
use firstcome_core::clock::now_ms;

/// A campaign as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignRow {
    pub id: String,
    pub name: String,
    pub value: i64,
    pub capacity: i64,
    pub issued: i64,
    pub active: bool,
}

/// Times a change of a campaign runs when the database keeps breaking deadlocks with it.
const UPSERT_ATTEMPTS: u32 = 10;

impl Store {
    /// Inserts or updates a campaign, keeping its issued count; refuses a capacity below it.
    ///
    /// Changes of one campaign at once (hosts applying the same file at start-up, two admin
    /// calls) can deadlock on MariaDB/MySQL: `INSERT IGNORE` share-locks the existing row, then
    /// each wants it exclusively. The database rolls one back; it is run again.
    pub async fn upsert_campaign(&self, c: &Campaign) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.try_upsert_campaign(c).await {
                Err(e) if e.is_transient() && attempt < UPSERT_ATTEMPTS => {
                    tracing::debug!(campaign = %c.id(), attempt, error = %e, "campaign change retried");
                    let pause = rand::random_range(1..=10 * u64::from(attempt));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_upsert_campaign(&self, c: &Campaign) -> Result<()> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let insert = self.dialect.insert_ignore(
            "campaigns (id, name, value, capacity, issued, opens_at, closes_at, \
             coupon_expires_at, chunk_size, active, updated_at, spec) \
             VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, 1, ?, ?)",
        );
        let spec = serde_json::to_string(&c.spec()).expect("a campaign spec always serialises");
        sqlx::query(&self.sql(&insert))
            .bind(c.id())
            .bind(c.name())
            .bind(c.value())
            .bind(c.capacity())
            .bind(c.opens_at())
            .bind(c.closes_at())
            .bind(c.coupon_expires_at())
            .bind(i64::from(c.chunk_size()))
            .bind(now)
            .bind(&spec)
            .execute(&mut *tx)
            .await?;
        let lock = match self.dialect {
            Dialect::Sqlite => "SELECT issued FROM campaigns WHERE id = ?",
            Dialect::MySql | Dialect::Postgres => {
                "SELECT issued FROM campaigns WHERE id = ? FOR UPDATE"
            }
        };
        let issued: i64 = sqlx::query(&self.sql(lock))
            .bind(c.id())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if c.capacity() < issued {
            return Err(StoreError::CapacityBelowIssued {
                capacity: c.capacity(),
                issued,
            });
        }
        sqlx::query(&self.sql(
            "UPDATE campaigns SET name = ?, value = ?, capacity = ?, opens_at = ?, closes_at = ?, \
             coupon_expires_at = ?, chunk_size = ?, active = 1, updated_at = ?, spec = ? \
             WHERE id = ?",
        ))
        .bind(c.name())
        .bind(c.value())
        .bind(c.capacity())
        .bind(c.opens_at())
        .bind(c.closes_at())
        .bind(c.coupon_expires_at())
        .bind(i64::from(c.chunk_size()))
        .bind(now)
        .bind(&spec)
        .bind(c.id())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The version in force of every active campaign: the document last applied, by id.
    /// A row whose document no longer reads (written by another version of the host) is
    /// left out, with a warning.
    pub async fn applied_campaigns(&self) -> Result<Vec<Campaign>> {
        let rows = sqlx::query(&self.sql(
            "SELECT id, spec FROM campaigns WHERE active = 1 AND spec IS NOT NULL ORDER BY id",
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut applied = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = super::text(row, 0)?;
            let spec = super::text(row, 1)?;
            let campaign = serde_json::from_str(&spec)
                .map_err(|e| e.to_string())
                .and_then(|spec| Campaign::new(&id, spec).map_err(|e| e.to_string()));
            match campaign {
                Ok(c) => applied.push(c),
                Err(e) => {
                    tracing::warn!(campaign = %id, error = %e, "the applied version does not read")
                }
            }
        }
        Ok(applied)
    }

    /// The version of one campaign last applied (active or not), if its document reads.
    pub async fn applied_campaign(&self, id: &str) -> Result<Option<Campaign>> {
        let row =
            sqlx::query(&self.sql("SELECT spec FROM campaigns WHERE id = ? AND spec IS NOT NULL"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let spec = super::text(&row, 0)?;
        Ok(serde_json::from_str(&spec)
            .ok()
            .and_then(|spec| Campaign::new(id, spec).ok()))
    }

    /// Marks a campaign inactive; its coupons and history stay.
    pub async fn deactivate_campaign(&self, id: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(&self.sql("UPDATE campaigns SET active = 0, updated_at = ? WHERE id = ?"))
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn campaign_row(&self, id: &str) -> Result<Option<CampaignRow>> {
        let row =
            sqlx::query(&self.sql(
                "SELECT id, name, value, capacity, issued, active FROM campaigns WHERE id = ?",
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(CampaignRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                value: r.try_get(2)?,
                capacity: r.try_get(3)?,
                issued: r.try_get(4)?,
                active: r.try_get::<i64, _>(5)? != 0,
            })
        })
        .transpose()
    }

    /// Issued count of a campaign (0 when it has no row yet).
    pub async fn issued_count(&self, id: &str) -> Result<i64> {
        Ok(self.campaign_row(id).await?.map_or(0, |r| r.issued))
    }

    /// Users holding a coupon of the campaign with their queue position, in position order:
    /// what the admission queue needs to rebuild its guard after losing its data.
    pub async fn issued_users(&self, campaign_id: &str) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query(&self.sql(
                "SELECT user_id, position FROM coupons WHERE campaign_id = ? ORDER BY position",
            ))
            .bind(campaign_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
