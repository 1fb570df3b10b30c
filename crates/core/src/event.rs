//! The events the platform publishes. Every event travels in one JSON [`Envelope`]; its
//! `event_id` is chosen once, when the outbox row is written, and is the same on every re-send.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Timestamp;

/// `event_type` of [`CouponIssued`].
pub const COUPON_ISSUED: &str = "coupon.issued";

/// The JSON envelope of every event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope<P> {
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub campaign_id: String,
    /// When the event happened (the chunk's commit); RFC 3339 in JSON.
    pub occurred_at: Timestamp,
    pub payload: P,
}

/// A coupon was issued: everything a consumer needs without a database look-up.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CouponIssued {
    pub user_id: String,
    pub email: Option<String>,
    pub fcm_token: Option<String>,
    pub gender: Option<String>,
    pub age_group: Option<String>,
    pub campaign_name: String,
    /// The coupon's worth in the smallest currency unit.
    pub campaign_value: i64,
    pub coupon_id: String,
    pub coupon_code: String,
    /// The request's place in the campaign's queue (1 = first).
    pub position: i64,
    pub request_id: String,
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

impl Envelope<CouponIssued> {
    pub fn coupon_issued(campaign_id: &str, at_ms: i64, payload: CouponIssued) -> Self {
        Self {
            event_id: Uuid::now_v7().to_string(),
            event_type: COUPON_ISSUED.to_owned(),
            schema_version: 1,
            campaign_id: campaign_id.to_owned(),
            occurred_at: Timestamp::from_millis(at_ms),
            payload,
        }
    }
}

/// One message on the bus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub event_id: String,
    pub key: String,
    pub payload: String,
    pub headers: BTreeMap<String, String>,
}

/// A message as a consumer receives it, with where it sits on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub message: Message,
}
