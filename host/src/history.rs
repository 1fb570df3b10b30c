//! The built-in history consumer (group `history`): one history row per issued coupon,
//! idempotent by event id. The WebAssembly plugins of the plugin issue take this role over.

use async_trait::async_trait;

use crate::bus::{Delivered, Handler, HandlerError};
use crate::clock::now_ms;
use crate::event::{COUPON_ISSUED, CouponIssued, Envelope};
use crate::store::{HistoryEntry, Store};

pub const GROUP: &str = "history";

#[derive(Debug, Clone)]
pub struct HistoryRecorder {
    pub store: Store,
}

#[async_trait]
impl Handler for HistoryRecorder {
    async fn handle(&self, event: &Delivered) -> Result<(), HandlerError> {
        let envelope: Envelope<CouponIssued> = serde_json::from_str(&event.message.payload)
            .map_err(|e| HandlerError::Permanent(format!("undecodable event: {e}")))?;
        if envelope.event_type != COUPON_ISSUED {
            return Ok(());
        }
        let issued_at = chrono::DateTime::parse_from_rfc3339(&envelope.payload.issued_at)
            .map_err(|e| HandlerError::Permanent(format!("bad issued_at: {e}")))?
            .timestamp_millis();
        let entry = HistoryEntry {
            event_id: envelope.event_id,
            campaign_id: envelope.campaign_id,
            user_id: envelope.payload.user_id,
            coupon_id: envelope.payload.coupon_id,
            coupon_code: envelope.payload.coupon_code,
            issued_at,
            handled_by: "builtin:history".into(),
            recorded_at: 0,
        };
        self.store
            .record_history(&entry, now_ms())
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))?;
        Ok(())
    }
}
