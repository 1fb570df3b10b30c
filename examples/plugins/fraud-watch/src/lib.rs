//! fraud-watch: flags suspicious issuance patterns of a campaign and emails an operator.
//!
//! Two patterns, kept in the plugin's key-value store (private to its campaign and role):
//! - one device (FCM token) claiming coupons for several accounts: the second and later
//!   accounts on a device are flagged;
//! - more coupons to one email domain than `max_per_domain` (disposable-address farms): the
//!   domain is flagged once, when it crosses the line.
//!
//! Each flag is written under `flag:{user}` or `flag:domain:{domain}` and emailed to
//! `operator_email`. Settings: `operator_email` (required), `max_per_domain` (default 50).
//! Grants: `kv`, `email`.

#[cfg(target_arch = "wasm32")]
mod component;

/// What to do about one issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// This device already claimed for these other users.
    SharedDevice { others: Vec<String> },
    /// The user's email domain just passed the limit.
    BusyDomain { domain: String, count: i64 },
}

/// The lowercase domain of an address, if it has one.
pub fn domain_of(email: &str) -> Option<String> {
    let (_, domain) = email.rsplit_once('@')?;
    let domain = domain.trim().to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// Users recorded for a device, as stored (one per line), with `user` added if new.
/// Returns the other users and the new stored value.
pub fn add_device_user(stored: Option<&str>, user: &str) -> (Vec<String>, String) {
    let mut users: Vec<String> = stored
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let others = users.iter().filter(|u| *u != user).cloned().collect();
    if !users.iter().any(|u| u == user) {
        users.push(user.to_owned());
    }
    (others, users.join("\n"))
}

/// Whether a domain's new count just crossed `max` (flag once, not on every later coupon).
pub fn crossed(count: i64, max: i64) -> bool {
    count == max + 1
}

/// Parses `max_per_domain`.
pub fn parse_max(value: Option<&str>) -> Result<i64, String> {
    match value {
        None => Ok(50),
        Some(v) => {
            v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                format!("max_per_domain {v:?}: must be a whole number of at least 1")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_collects_its_users() {
        let (others, stored) = add_device_user(None, "a");
        assert!(others.is_empty());
        let (others, stored) = add_device_user(Some(&stored), "b");
        assert_eq!(others, ["a"]);
        let (others, again) = add_device_user(Some(&stored), "b");
        assert_eq!((others, again), (vec!["a".to_owned()], stored));
    }

    #[test]
    fn domains_and_limits() {
        assert_eq!(domain_of("X@Mail.Example"), Some("mail.example".into()));
        assert_eq!(domain_of("nobody"), None);
        assert!(crossed(51, 50) && !crossed(52, 50) && !crossed(50, 50));
        assert_eq!(parse_max(None), Ok(50));
        assert!(parse_max(Some("0")).is_err() && parse_max(Some("x")).is_err());
    }
}
