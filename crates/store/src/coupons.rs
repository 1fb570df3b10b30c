//! Coupons: the chunk transaction that issues them, and the look-ups the API serves.

use std::collections::HashMap;

use rand::Rng;
use serde::Serialize;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use super::{Dialect, Result, Store, StoreError, placeholders};
use crate::OutboxEvent;
use firstcome_core::clock::{Timestamp, now_ms};
use firstcome_core::event::{CouponIssued, Envelope};
use firstcome_core::queue::{Floor, QueueItem};

/// What one chunk transaction did with each item it was given.
#[derive(Debug, Default)]
pub struct ChunkOutcome {
    /// Events written to the outbox, one per new coupon, in queue order.
    pub events: Vec<OutboxEvent>,
    /// Users who already held a coupon (a redelivered item): nothing written.
    pub duplicates: Vec<String>,
    /// Users refused because the campaign is full in the database even though the admission
    /// queue let them in, which happens only after the queue lost its data.
    pub refused: Vec<String>,
    /// The campaign's issue mark after the commit.
    pub mark: Floor,
}

/// A coupon as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CouponView {
    pub coupon_id: String,
    pub campaign_id: String,
    pub campaign_name: String,
    /// The coupon's worth in the smallest currency unit.
    pub value: i64,
    /// 12 characters of Crockford's base32, unique.
    #[schema(example = "7QX2M9K4ZB1C")]
    pub code: String,
    /// The request's place in line.
    pub position: i64,
    /// RFC 3339.
    #[schema(value_type = String, format = DateTime)]
    pub issued_at: Timestamp,
    /// RFC 3339; absent when the coupon does not expire.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

/// Crockford's base32 alphabet: no I, L, O or U to misread.
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// 12 characters, 60 random bits: the unique index catches the rare collision.
fn coupon_code() -> String {
    let mut rng = rand::rng();
    (0..12)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

struct CampaignLock {
    issued: i64,
    last_position: i64,
    capacity: i64,
    name: String,
    value: i64,
    coupon_expires_at: Option<i64>,
}

/// Rows per multi-row `INSERT` (9 bind parameters each: well under every engine's limit).
const ROWS_PER_INSERT: usize = 500;

impl Store {
    /// Issues one chunk in one transaction: a coupon per item (unique per campaign and user),
    /// the campaign's issued count and highest issued position advanced, one outbox row per
    /// coupon. A fixed number of statements whatever the chunk's size: the lock, one look-up of
    /// the users who already hold a coupon, one multi-row `INSERT` per table (per 500 rows),
    /// one update. Items are handled in queue order; the campaign row is locked so that concurrent chunks from
    /// several hosts serialise on it and `issued` never passes `capacity`.
    pub async fn issue_chunk(
        &self,
        campaign_id: &str,
        items: &[QueueItem],
        issued_by: &str,
        topic: &str,
    ) -> Result<ChunkOutcome> {
        let mut items: Vec<&QueueItem> = items.iter().collect();
        items.sort_by_key(|i| i.position);
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.issuing.begin().await?;
        let campaign = self.lock_campaign(&mut tx, campaign_id).await?;
        let mut remaining = campaign.capacity - campaign.issued;
        let profiles = self.profiles_in(&mut tx, &items).await?;
        let mut outcome = ChunkOutcome::default();
        // Who already holds a coupon, in one look-up. Exact: every coupon is written here,
        // under the campaign row lock taken above.
        let holders = self.holders_among(&mut tx, campaign_id, &items).await?;
        let mut taking: Vec<&QueueItem> = Vec::with_capacity(items.len());
        let mut in_chunk = std::collections::HashSet::new();
        for item in items {
            if holders.contains(&item.user_id) || !in_chunk.insert(item.user_id.as_str()) {
                outcome.duplicates.push(item.user_id.clone());
            } else if remaining <= 0 {
                outcome.refused.push(item.user_id.clone());
            } else {
                remaining -= 1;
                taking.push(item);
            }
        }
        let codes = self
            .insert_coupons(&mut tx, campaign_id, &taking, &campaign, issued_by, now)
            .await?;
        let new_coupons: Vec<(&QueueItem, (String, String))> =
            taking.into_iter().zip(codes).collect();
        let issued = campaign.issued + new_coupons.len() as i64;
        outcome.mark = Floor {
            issued,
            campaign_issued: issued,
            last_position: new_coupons
                .iter()
                .map(|(item, _)| item.position)
                .fold(campaign.last_position, i64::max),
        };
        if !new_coupons.is_empty() {
            let profiles: HashMap<&str, &super::users::UserProfile> =
                profiles.iter().map(|p| (p.user_id.as_str(), p)).collect();
            let issued_at = Timestamp::from_millis(now);
            let expires_at = campaign.coupon_expires_at.map(Timestamp::from_millis);
            for (item, (coupon_id, code)) in &new_coupons {
                let profile = profiles.get(item.user_id.as_str());
                let payload = CouponIssued {
                    user_id: item.user_id.clone(),
                    email: profile.and_then(|p| p.email.clone()),
                    fcm_token: profile.and_then(|p| p.fcm_token.clone()),
                    gender: profile.and_then(|p| p.gender.clone()),
                    age_group: profile.and_then(|p| p.age_group.clone()),
                    campaign_name: campaign.name.clone(),
                    campaign_value: campaign.value,
                    coupon_id: coupon_id.clone(),
                    coupon_code: code.clone(),
                    position: item.position,
                    request_id: item.request_id.clone(),
                    issued_at,
                    expires_at,
                };
                let envelope = Envelope::coupon_issued(campaign_id, now, payload);
                outcome.events.push(OutboxEvent {
                    event_id: envelope.event_id.clone(),
                    topic: topic.to_owned(),
                    key: item.user_id.clone(),
                    payload: serde_json::to_string(&envelope)
                        .expect("an event envelope always serialises"),
                    created_at: now,
                });
            }
            self.insert_outbox(&mut tx, &outcome.events).await?;
            sqlx::query(&self.sql(
                "UPDATE campaigns SET issued = issued + ?, last_position = ?, updated_at = ? \
                 WHERE id = ?",
            ))
            .bind(new_coupons.len() as i64)
            .bind(outcome.mark.last_position)
            .bind(now)
            .bind(campaign_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn lock_campaign(
        &self,
        tx: &mut Transaction<'static, Any>,
        campaign_id: &str,
    ) -> Result<CampaignLock> {
        let select = "SELECT issued, capacity, name, value, coupon_expires_at, last_position \
                      FROM campaigns WHERE id = ?";
        let row = match self.dialect {
            Dialect::Sqlite => {
                // SQLite has no row locks: a first write takes the database's write lock,
                // so the read below cannot go stale before commit.
                sqlx::query("UPDATE campaigns SET issued = issued WHERE id = ?")
                    .bind(campaign_id)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(select)
                    .bind(campaign_id)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            Dialect::MySql | Dialect::Postgres => {
                sqlx::query(&self.sql(&format!("{select} FOR UPDATE")))
                    .bind(campaign_id)
                    .fetch_optional(&mut **tx)
                    .await?
            }
        };
        let row = row.ok_or_else(|| StoreError::UnknownCampaign(campaign_id.to_owned()))?;
        Ok(CampaignLock {
            issued: row.try_get(0)?,
            capacity: row.try_get(1)?,
            name: row.try_get(2)?,
            value: row.try_get(3)?,
            coupon_expires_at: row.try_get(4)?,
            last_position: row.try_get(5)?,
        })
    }

    /// Inserts one coupon per item with multi-row `INSERT`s (up to [`ROWS_PER_INSERT`] rows
    /// each) and returns each coupon's (id, code), in the items' order. The items hold no
    /// coupon yet (checked under the campaign lock); a unique key that still refuses a row (a
    /// code colliding with another coupon's, about once in 10^18) fails the transaction, and
    /// the issuer retries the chunk with new codes.
    async fn insert_coupons(
        &self,
        tx: &mut Transaction<'static, Any>,
        campaign_id: &str,
        items: &[&QueueItem],
        campaign: &CampaignLock,
        issued_by: &str,
        now: i64,
    ) -> Result<Vec<(String, String)>> {
        let coupons: Vec<(String, String)> = items
            .iter()
            .map(|_| (Uuid::now_v7().to_string(), coupon_code()))
            .collect();
        let rows: Vec<(&&QueueItem, &(String, String))> = items.iter().zip(&coupons).collect();
        for slice in rows.chunks(ROWS_PER_INSERT) {
            let values = vec![super::placeholders(9); slice.len()].join(", ");
            let q = format!(
                "INSERT INTO coupons (id, campaign_id, user_id, code, request_id, position, \
                 issued_at, expires_at, issued_by) VALUES {values}"
            );
            let sql = self.sql(&q);
            let mut query = sqlx::query(&sql);
            for (item, (id, code)) in slice {
                query = query
                    .bind(id)
                    .bind(campaign_id)
                    .bind(&item.user_id)
                    .bind(code)
                    .bind(&item.request_id)
                    .bind(item.position)
                    .bind(now)
                    .bind(campaign.coupon_expires_at)
                    .bind(issued_by);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(coupons)
    }

    /// Which of the items' users already hold a coupon of the campaign.
    async fn holders_among(
        &self,
        tx: &mut Transaction<'static, Any>,
        campaign_id: &str,
        items: &[&QueueItem],
    ) -> Result<std::collections::HashSet<String>> {
        let mut holders = std::collections::HashSet::new();
        for slice in items.chunks(ROWS_PER_INSERT) {
            let q = format!(
                "SELECT user_id FROM coupons WHERE campaign_id = ? AND user_id IN {}",
                super::placeholders(slice.len())
            );
            let sql = self.sql(&q);
            let mut query = sqlx::query(&sql).bind(campaign_id);
            for item in slice {
                query = query.bind(&item.user_id);
            }
            for row in query.fetch_all(&mut **tx).await? {
                holders.insert(super::text(&row, 0)?);
            }
        }
        Ok(holders)
    }

    /// The coupon a user holds in a campaign, if any.
    pub async fn coupon_of(&self, campaign_id: &str, user_id: &str) -> Result<Option<CouponView>> {
        let q = format!("{COUPON_VIEW} WHERE c.campaign_id = ? AND c.user_id = ?");
        let row = sqlx::query(&self.sql(&q))
            .bind(campaign_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| coupon_view(&r)).transpose()
    }

    /// Every coupon of a user, newest first.
    pub async fn coupons_of_user(&self, user_id: &str) -> Result<Vec<CouponView>> {
        let q = format!("{COUPON_VIEW} WHERE c.user_id = ? ORDER BY c.issued_at DESC, c.id DESC");
        let rows = sqlx::query(&self.sql(&q))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(coupon_view).collect()
    }

    /// Total coupons of a campaign, counted row by row (the tests' ground truth).
    pub async fn count_coupons(&self, campaign_id: &str) -> Result<i64> {
        let row = sqlx::query(&self.sql("SELECT COUNT(*) FROM coupons WHERE campaign_id = ?"))
            .bind(campaign_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn profiles_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        items: &[&QueueItem],
    ) -> Result<Vec<super::users::UserProfile>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let q = format!(
            "SELECT id, email, fcm_token, gender, age_group FROM users WHERE id IN {}",
            placeholders(items.len())
        );
        let sql = self.sql(&q);
        let mut query = sqlx::query(&sql);
        for item in items {
            query = query.bind(&item.user_id);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        rows.iter().map(super::users::profile_from_row).collect()
    }
}

const COUPON_VIEW: &str = "SELECT c.id, c.campaign_id, k.name, k.value, c.code, c.position, \
                           c.issued_at, c.expires_at FROM coupons c \
                           JOIN campaigns k ON k.id = c.campaign_id";

fn coupon_view(r: &sqlx::any::AnyRow) -> Result<CouponView> {
    Ok(CouponView {
        coupon_id: r.try_get(0)?,
        campaign_id: r.try_get(1)?,
        campaign_name: r.try_get(2)?,
        value: r.try_get(3)?,
        code: r.try_get(4)?,
        position: r.try_get(5)?,
        issued_at: Timestamp::from_millis(r.try_get(6)?),
        expires_at: r.try_get::<Option<i64>, _>(7)?.map(Timestamp::from_millis),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_use_the_unambiguous_alphabet() {
        let code = super::coupon_code();
        assert_eq!(code.len(), 12);
        assert!(code.bytes().all(|b| super::CODE_ALPHABET.contains(&b)));
    }
}
