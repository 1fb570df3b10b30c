//! The component glue: kv and email through the host.

wit_bindgen::generate!({ path: "../../../wit", world: "consumer-with-init" });

use exports::firstcome::plugin::handler::Guest as Handler;
use exports::firstcome::plugin::init::Guest as Init;
use firstcome::plugin::delivery::DeliveryError;
use firstcome::plugin::log::{self, Level};
use firstcome::plugin::types::{CouponIssued, Event, HandleError};
use firstcome::plugin::{email, kv, settings};

use crate::{Finding, add_device_user, crossed, domain_of, parse_max};

struct FraudWatch;

impl Init for FraudWatch {
    fn init(settings: Vec<(String, String)>) -> Result<(), String> {
        let get = |k: &str| {
            settings
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        match get("operator_email") {
            Some(to) if to.contains('@') => {}
            _ => return Err("operator_email: set the address flags are sent to".into()),
        }
        parse_max(get("max_per_domain")).map(drop)
    }
}

impl Handler for FraudWatch {
    fn handle(event: Event) -> Result<(), HandleError> {
        match event {
            Event::CouponIssued(c) => watch(&c),
        }
    }
}

fn text(key: &str) -> Option<String> {
    kv::get(key).map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn watch(c: &CouponIssued) -> Result<(), HandleError> {
    let mut findings = Vec::new();
    if let Some(token) = c.fcm_token.as_deref().filter(|t| !t.is_empty()) {
        let key = format!("device:{token}");
        let (others, stored) = add_device_user(text(&key).as_deref(), &c.user_id);
        kv::set(&key, stored.as_bytes());
        if !others.is_empty() {
            findings.push(Finding::SharedDevice { others });
        }
    }
    if let Some(domain) = c.email.as_deref().and_then(domain_of) {
        let max = parse_max(settings::get("max_per_domain").as_deref())
            .map_err(HandleError::Permanent)?;
        let count = kv::increment(&format!("domain:{domain}"), 1);
        if crossed(count, max) {
            findings.push(Finding::BusyDomain { domain, count });
        }
    }
    for finding in findings {
        let (key, line) = match &finding {
            Finding::SharedDevice { others } => (
                format!("flag:{}", c.user_id),
                format!(
                    "user {} shares a device with {}",
                    c.user_id,
                    others.join(", ")
                ),
            ),
            Finding::BusyDomain { domain, count } => (
                format!("flag:domain:{domain}"),
                format!("{count} coupons went to addresses at {domain}"),
            ),
        };
        kv::set(&key, line.as_bytes());
        log::log(Level::Warn, &line);
        let to = settings::get("operator_email").unwrap_or_default();
        let subject = format!("[fraud-watch] {}: {line}", c.campaign_name);
        let body = format!(
            "{line}\n\ncampaign: {} ({})\ncoupon: {} (position {})\nevent: {}\n",
            c.campaign_name, c.campaign_id, c.coupon_code, c.position, c.event_id
        );
        email::send(&to, &subject, &body).map_err(|e| match e {
            DeliveryError::Rejected(m) => {
                HandleError::Permanent(format!("operator email refused: {m}"))
            }
            DeliveryError::Unavailable(m) => {
                HandleError::Retryable(format!("email unavailable: {m}"))
            }
        })?;
    }
    Ok(())
}

export!(FraudWatch);
