//! The component glue: settings from the host, email and push through its capabilities.

wit_bindgen::generate!({ path: "../../wit", world: "consumer-with-init" });

use exports::firstcome::plugin::handler::Guest as Handler;
use exports::firstcome::plugin::init::Guest as Init;
use firstcome::plugin::delivery::DeliveryError;
use firstcome::plugin::types::{CouponIssued, Event, HandleError};
use firstcome::plugin::{email, push, settings};

use crate::{Fields, check_template, date_of, render};

const TEMPLATES: [(&str, &str); 4] = [
    ("email_subject", crate::DEFAULT_EMAIL_SUBJECT),
    ("email_body", crate::DEFAULT_EMAIL_BODY),
    ("push_title", crate::DEFAULT_PUSH_TITLE),
    ("push_body", crate::DEFAULT_PUSH_BODY),
];

fn template(name: &str) -> String {
    let default = TEMPLATES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, d)| d);
    settings::get(name).unwrap_or_else(|| default.to_owned())
}

fn failed(channel: &str, error: DeliveryError) -> HandleError {
    match error {
        DeliveryError::Rejected(m) => HandleError::Permanent(format!("{channel} refused: {m}")),
        DeliveryError::Unavailable(m) => {
            HandleError::Retryable(format!("{channel} unavailable: {m}"))
        }
    }
}

struct Notification;

impl Init for Notification {
    fn init(settings: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in &settings {
            if !TEMPLATES.iter().any(|(name, _)| name == key) {
                return Err(format!(
                    "unknown setting {key:?}; known: email_subject, email_body, push_title, push_body"
                ));
            }
            check_template(key, value)?;
        }
        Ok(())
    }
}

impl Handler for Notification {
    fn handle(event: Event) -> Result<(), HandleError> {
        match event {
            Event::CouponIssued(c) => notify(&c),
        }
    }
}

fn notify(c: &CouponIssued) -> Result<(), HandleError> {
    let expires = c.expires_at_ms.map_or_else(|| "never".to_owned(), date_of);
    let fields = Fields {
        campaign: &c.campaign_name,
        code: &c.coupon_code,
        value: c.campaign_value,
        user: &c.user_id,
        expires: &expires,
    };
    if let Some(to) = c.email.as_deref().filter(|e| !e.is_empty()) {
        let subject = render(&template("email_subject"), &fields);
        let body = render(&template("email_body"), &fields);
        email::send(to, &subject, &body).map_err(|e| failed("email", e))?;
    }
    if let Some(token) = c.fcm_token.as_deref().filter(|t| !t.is_empty()) {
        let title = render(&template("push_title"), &fields);
        let body = render(&template("push_body"), &fields);
        let data = vec![
            ("campaign_id".to_owned(), c.campaign_id.clone()),
            ("coupon_code".to_owned(), c.coupon_code.clone()),
        ];
        push::send(token, &title, &body, &data).map_err(|e| failed("push", e))?;
    }
    Ok(())
}

export!(Notification);
