//! The notification consumer: tells the user about their coupon by email, and by push when
//! the user has an FCM token.
//!
//! Unlike the replaced system's consumer it never swallows an error: a service that is down
//! is a retryable failure (retried, then dead-lettered), a refused address or token a
//! permanent one. A user with neither an email address nor a token is simply skipped. The
//! host skips a send it already made for the same event, so a retry after a failed push does
//! not email the user twice.
//!
//! Settings (all optional), templates with `{campaign}`, `{code}`, `{value}`, `{user}` and
//! `{expires}`:
//! - `email_subject`, `email_body`: the email;
//! - `push_title`, `push_body`: the notification.

#[cfg(target_arch = "wasm32")]
mod component;

pub const DEFAULT_EMAIL_SUBJECT: &str = "Your {campaign} coupon";
pub const DEFAULT_EMAIL_BODY: &str = "Hello {user},\n\nyour coupon for {campaign} is {code} \
(worth {value}). It expires {expires}.\n\nThank you for joining in!";
pub const DEFAULT_PUSH_TITLE: &str = "You got a coupon!";
pub const DEFAULT_PUSH_BODY: &str = "{campaign}: {code}";

const PLACEHOLDERS: [&str; 5] = ["campaign", "code", "value", "user", "expires"];

/// The values a template can name.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub campaign: &'a str,
    pub code: &'a str,
    pub value: i64,
    pub user: &'a str,
    /// Already formatted ("2026-12-31", or "never").
    pub expires: &'a str,
}

/// Checks that a template names only known placeholders and closes every brace.
pub fn check_template(name: &str, template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("{name}: unclosed '{{' in {template:?}"));
        };
        let key = &rest[start + 1..start + len];
        if !PLACEHOLDERS.contains(&key) {
            return Err(format!(
                "{name}: unknown placeholder {{{key}}}; use one of {{campaign}}, {{code}}, \
                 {{value}}, {{user}}, {{expires}}"
            ));
        }
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

/// Fills a template that [`check_template`] accepted.
pub fn render(template: &str, f: &Fields<'_>) -> String {
    template
        .replace("{campaign}", f.campaign)
        .replace("{code}", f.code)
        .replace("{value}", &f.value.to_string())
        .replace("{user}", f.user)
        .replace("{expires}", f.expires)
}

/// Days since 1970-01-01 as a calendar date (proleptic Gregorian), for `{expires}`.
pub fn date_of(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_bad_ones_are_refused() {
        let f = Fields {
            campaign: "Spring",
            code: "AB12",
            value: 5000,
            user: "u1",
            expires: "never",
        };
        assert_eq!(
            render("{campaign}: {code} ({value}) {user} {expires}", &f),
            "Spring: AB12 (5000) u1 never"
        );
        for t in [
            DEFAULT_EMAIL_SUBJECT,
            DEFAULT_EMAIL_BODY,
            DEFAULT_PUSH_TITLE,
            DEFAULT_PUSH_BODY,
        ] {
            check_template("t", t).unwrap();
        }
        assert!(
            check_template("email_subject", "{nope}")
                .unwrap_err()
                .contains("unknown placeholder {nope}")
        );
        assert!(
            check_template("email_body", "hi {code")
                .unwrap_err()
                .contains("unclosed")
        );
    }

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_772_326_800_000), "2026-03-01");
        assert_eq!(date_of(951_782_400_000), "2000-02-29");
    }
}
