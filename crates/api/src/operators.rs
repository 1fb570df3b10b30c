//! Who an operator is: the admin plane's named credentials and their roles.
//!
//! Every admin route takes one of [`Viewer`], [`Operator`] or [`Admin`] as its first argument,
//! so that the credential and its role are checked before anything else is read from the
//! request. A credential is a bearer token (`Authorization: Bearer …`, the scheme in any
//! case); the host keeps only its SHA-256 (`admin_tokens`, or the digest of `admin_token`),
//! and compares the digest of what it is given with every credential's in constant time
//! (`subtle`): neither the time taken nor the answer says how close a guess came.
//!
//! Wrong credentials are counted per client address (`firstcome_admin_auth_failures_total`)
//! and slowed: after `limits.admin_auth_failures_burst` (10) of them, an address may try once
//! every `limits.admin_auth_failure_period_ms` (6 s), and is answered `429` with `Retry-After`
//! until then, whatever credential it sends. A request with no credential at all guesses
//! nothing: it is answered `401` and not counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use firstcome_platform::Platform;
use firstcome_platform::config::{AdminRole, Config};

/// Addresses whose failures are remembered at once; past it, the oldest are forgotten.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// The credentials of the admin plane, built once at start-up ([`Operators::from_config`]).
#[derive(Debug)]
pub struct Operators {
    credentials: Vec<Credential>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses that used up their failures, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

#[derive(Debug)]
struct Credential {
    name: String,
    role: AdminRole,
    sha256: [u8; 32],
}

/// A verified operator: the credential's name (the audit log's actor) and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: AdminRole,
}

/// Which plane a listener serves; the admin credentials count only where the admin plane is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// The shopper API, health, and what campaigns make public.
    Public,
    /// The admin routes, metrics, the pages and the API document.
    Admin,
    /// Both, on one listener.
    Both,
}

impl Plane {
    pub fn serves_admin(self) -> bool {
        matches!(self, Self::Admin | Self::Both)
    }
}

impl Operators {
    /// The credentials `admin_token` and `admin_tokens` name. Refuses a short token, a
    /// malformed digest or a name used twice (see [`Config::check_admin_tokens`]).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        config.check_admin_tokens()?;
        let mut credentials = Vec::new();
        if let Some(token) = config
            .admin_token
            .as_ref()
            .map(|t| t.expose())
            .filter(|t| !t.is_empty())
        {
            credentials.push(Credential {
                name: "admin".into(),
                role: AdminRole::Admin,
                sha256: Sha256::digest(token.as_bytes()).into(),
            });
        }
        for entry in &config.admin_tokens {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&entry.sha256, &mut sha256)
                .map_err(|_| format!("admin_tokens ({}): sha256 is not hex", entry.name))?;
            credentials.push(Credential {
                name: entry.name.clone(),
                role: entry.role,
                sha256,
            });
        }
        let limits = &config.limits;
        let period = Duration::from_millis(limits.admin_auth_failure_period_ms.max(1));
        let quota = Quota::with_period(period)
            .expect("a period above zero")
            .allow_burst(
                NonZeroU32::new(limits.admin_auth_failures_burst.max(1)).expect("above zero"),
            );
        Ok(Self {
            credentials,
            failures: RateLimiter::keyed(quota),
            blocked: Mutex::default(),
        })
    }

    /// Whether any credential is configured (without one the admin API refuses everything).
    pub fn enabled(&self) -> bool {
        !self.credentials.is_empty()
    }

    /// The operator `headers` prove, or why not: `401 unauthorized` for a missing or wrong
    /// credential (counted against `address`), `429 rate_limited` while `address` has used
    /// up its failures.
    pub fn verify(&self, headers: &HeaderMap, address: IpAddr) -> Result<Caller, ApiError> {
        // An IPv6 client holds a /64: its failures are counted together, as its admissions.
        let address = super::shoppers::bucket_address(address);
        if self.credentials.is_empty() {
            return Err(unauthorized(
                "the admin API is disabled: set FIRSTCOME_ADMIN_TOKEN or admin_tokens",
            ));
        }
        let Some(token) = bearer(headers) else {
            return Err(unauthorized("missing bearer token"));
        };
        // An address that used up its failures is not heard until it may fail again, so that
        // guessing goes no faster with a right guess among the wrong ones.
        if let Err(not_until) = self.failures_left(address) {
            return Err(slowed(not_until));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every credential is compared, whichever matches: the time taken is the same.
        let mut found = None;
        for credential in &self.credentials {
            if bool::from(credential.sha256.ct_eq(&digest)) {
                found = Some(credential);
            }
        }
        match found {
            Some(c) => Ok(Caller {
                name: c.name.clone(),
                role: c.role,
            }),
            None => Err(self.failed(address, "wrong bearer token")),
        }
    }

    /// `Ok` when `address` may be heard, else how long until it may.
    fn failures_left(&self, address: IpAddr) -> Result<(), Duration> {
        let blocked = self.blocked.lock().unwrap();
        match blocked.get(&address) {
            Some(until) if *until > Instant::now() => Err(*until - Instant::now()),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `address` and says what was wrong (never quoting the credential).
    /// The failure that empties the address's allowance blocks it until the next is due.
    fn failed(&self, address: IpAddr, why: &str) -> ApiError {
        metrics::counter!("firstcome_admin_auth_failures_total").increment(1);
        tracing::warn!(client = %address, reason = why, "admin credential refused");
        if let Err(not_until) = self.failures.check_key(&address) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock().unwrap();
            if blocked.len() >= MAX_TRACKED_ADDRESSES {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            if blocked.len() < MAX_TRACKED_ADDRESSES {
                blocked.insert(address, Instant::now() + wait);
            }
        }
        if self.failures.len() > MAX_TRACKED_ADDRESSES {
            self.failures.retain_recent();
        }
        unauthorized(why)
    }

    /// Forgets addresses whose failures have all been forgiven.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.blocked.lock().unwrap().retain(|_, until| *until > now);
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
    }
}

/// The bearer token of `headers`: `Authorization: Bearer <token>`, the scheme in any case
/// (RFC 9110, 11.1: schemes are case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        .with_header("www-authenticate", "Bearer realm=\"firstcome-admin\"")
}

fn slowed(wait: Duration) -> ApiError {
    metrics::counter!("firstcome_admin_auth_slowed_total").increment(1);
    ApiError::too_many(
        "rate_limited",
        "too many failed admin credentials from this address; try again after Retry-After",
        wait,
    )
}

/// The operator of a request, if the admin plane is served here and the request carries a
/// credential of at least `role`. Used by routes that serve more to operators (a campaign's
/// statistics); a request without a credential is not counted as a failure.
fn operator_of(parts: &Parts, role: AdminRole) -> Option<Caller> {
    let plane = parts.extensions.get::<Plane>().copied()?;
    let token = bearer(&parts.headers)?;
    if !plane.serves_admin() {
        return None;
    }
    // On a shared listener a shopper's JWT reaches these routes too: it is no guess at an
    // admin credential, and counting it would let shoppers lock out an operator behind the
    // same address. (An `admin_token` shaped like a JWT is refused at start.)
    if token.matches('.').count() == 2 {
        return None;
    }
    let operators = parts.extensions.get::<Arc<Operators>>()?;
    let address = super::shoppers::client_address(parts).ok()?;
    operators
        .verify(&parts.headers, address)
        .ok()
        .filter(|c| c.role >= role)
}

/// The verified caller of an admin route holding at least `role`: `404` where the admin plane
/// is not served, `401`/`429` as [`Operators::verify`] says, `403 forbidden` for a weaker role.
fn authorize(parts: &Parts, role: AdminRole) -> Result<Caller, ApiError> {
    let plane = parts
        .extensions
        .get::<Plane>()
        .copied()
        .unwrap_or(Plane::Both);
    if !plane.serves_admin() {
        return Err(ApiError::not_found("not_found", "no such route"));
    }
    let operators = parts
        .extensions
        .get::<Arc<Operators>>()
        .ok_or_else(|| ApiError::internal(&"the router was built without Operators"))?;
    let address = super::shoppers::client_address(parts)?;
    let caller = operators.verify(&parts.headers, address)?;
    if caller.role < role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the credential {:?} has the {} role; this needs {}",
                caller.name,
                caller.role.name(),
                role.name()
            ),
        ));
    }
    Ok(caller)
}

/// The caller of a route that serves more to operators (a campaign's statistics): the
/// operator, when the admin plane is served here and the request carries a valid credential;
/// else `None`. Never refuses.
#[derive(Debug)]
pub struct OperatorIfAny(pub Option<Caller>);

impl FromRequestParts<Arc<Platform>> for OperatorIfAny {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &Arc<Platform>,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Self(operator_of(parts, AdminRole::Viewer)))
    }
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub Caller);

        impl FromRequestParts<Arc<Platform>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                _: &Arc<Platform>,
            ) -> Result<Self, ApiError> {
                authorize(parts, $role).map(Self)
            }
        }
    };
}

role_extractor!(
    /// A caller allowed to read the admin plane (any role).
    Viewer,
    AdminRole::Viewer
);
role_extractor!(
    /// A caller allowed to change campaigns, dead letters and replays (`operator`, `admin`).
    Operator,
    AdminRole::Operator
);
role_extractor!(
    /// A caller allowed everything (`admin`).
    Admin,
    AdminRole::Admin
);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tokens: &[(&str, AdminRole, &str)]) -> Config {
        Config {
            admin_tokens: tokens
                .iter()
                .map(
                    |(name, role, token)| firstcome_platform::config::AdminTokenConfig {
                        name: (*name).into(),
                        role: *role,
                        sha256: hex::encode(Sha256::digest(token.as_bytes())),
                    },
                )
                .collect(),
            ..Config::default()
        }
    }

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_named_credential_is_found_by_its_digest_in_any_scheme_case() {
        let ops = Operators::from_config(&config(&[
            (
                "ana",
                AdminRole::Viewer,
                "a-viewer-token-of-enough-length-000",
            ),
            (
                "bo",
                AdminRole::Operator,
                "an-operator-token-of-enough-length-1",
            ),
        ]))
        .unwrap();
        let ip = IpAddr::from([10, 0, 0, 1]);
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let caller = ops
                .verify(
                    &with(&format!("{scheme} an-operator-token-of-enough-length-1")),
                    ip,
                )
                .unwrap();
            assert_eq!(
                (caller.name.as_str(), caller.role),
                ("bo", AdminRole::Operator)
            );
        }
        let e = ops.verify(&with("Basic abc"), ip).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn failures_are_slowed_per_address() {
        let ops = Operators::from_config(&config(&[(
            "ana",
            AdminRole::Admin,
            "the-right-token-of-enough-length-000",
        )]))
        .unwrap();
        let guesser = IpAddr::from([10, 0, 0, 2]);
        // No credential at all guesses nothing.
        for _ in 0..50 {
            let e = ops.verify(&HeaderMap::new(), guesser).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        }
        for _ in 0..Config::default().limits.admin_auth_failures_burst {
            let e = ops.verify(&with("Bearer wrong"), guesser).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        }
        // The failure after the burst is refused and blocks the address: even the right
        // token waits now.
        let e = ops.verify(&with("Bearer wrong"), guesser).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = ops
            .verify(
                &with("Bearer the-right-token-of-enough-length-000"),
                guesser,
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        // Another address is not held back.
        ops.verify(
            &with("Bearer the-right-token-of-enough-length-000"),
            IpAddr::from([10, 0, 0, 3]),
        )
        .unwrap();
    }

    #[test]
    fn a_short_token_is_refused_at_start() {
        let e = Operators::from_config(&Config {
            admin_token: Some("a".into()),
            ..Config::default()
        })
        .unwrap_err();
        assert!(e.contains("shorter than 32"), "{e}");
        assert!(!e.contains("\"a\""), "{e}");
    }
}
