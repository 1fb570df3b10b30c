//! `auth.mode = "signed-header"`: a storefront backend or gateway in front of the hosts names
//! the logged-in shopper and signs the name, as Shopify's app proxy does:
//!
//! - `X-Firstcome-User`: the user id (UTF-8);
//! - `X-Firstcome-Timestamp`: when it was signed, in Unix seconds;
//! - `X-Firstcome-Signature`: lower-case hex of HMAC-SHA256 under `auth.signed_header.secret`
//!   over `{timestamp}.{user}` (the two header values joined by one `.`).
//!
//! A signature further than `auth.signed_header.max_age_s` from now, either way, is refused,
//! so a captured header set is good for that long only. A user header without a valid
//! signature is never believed.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::unauthenticated;
use crate::error::ApiError;
use firstcome_core::user::UserId;
use firstcome_platform::config::SignedHeaderConfig;

/// The header naming the shopper.
pub const USER_HEADER: &str = "x-firstcome-user";
/// The header with the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-firstcome-timestamp";
/// The header with the signature, hex.
pub const SIGNATURE_HEADER: &str = "x-firstcome-signature";
/// Shortest secret accepted, in bytes (HMAC-SHA256's output size).
pub const MIN_SECRET_BYTES: usize = 32;

const CHALLENGE: &str = "FirstcomeSignature realm=\"shoppers\"";

/// The verifier of signed user headers.
pub struct SignedHeader {
    key: Hmac<Sha256>,
    max_age_s: u64,
}

impl std::fmt::Debug for SignedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedHeader")
            .field("max_age_s", &self.max_age_s)
            .finish_non_exhaustive()
    }
}

impl SignedHeader {
    /// Refuses a missing or short secret.
    pub fn from_config(config: &SignedHeaderConfig) -> Result<Self, String> {
        let secret = config.secret.as_ref().map_or("", |s| s.expose());
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "auth.mode = \"signed-header\" needs auth.signed_header.secret of at least \
                 {MIN_SECRET_BYTES} bytes (for example 64 hex digits from `openssl rand -hex 32`)"
            ));
        }
        let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| format!("auth.signed_header.secret: {e}"))?;
        Ok(Self {
            key,
            max_age_s: config.max_age_s,
        })
    }

    /// The shopper the headers name, if the signature holds and is fresh.
    pub fn verify(&self, headers: &HeaderMap) -> Result<UserId, ApiError> {
        self.verify_at(headers, firstcome_core::clock::now_ms() / 1000)
    }

    fn verify_at(&self, headers: &HeaderMap, now_s: i64) -> Result<UserId, ApiError> {
        let fail = |m: &str| unauthenticated(CHALLENGE, m);
        let one = |name: &str| -> Result<&[u8], ApiError> {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(value), None) => Ok(value.as_bytes()),
                (None, _) => Err(fail(&format!("the {name} header is missing"))),
                (Some(_), Some(_)) => Err(fail(&format!("the {name} header is sent twice"))),
            }
        };
        let user = one(USER_HEADER)?;
        let timestamp = one(TIMESTAMP_HEADER)?;
        let signature = one(SIGNATURE_HEADER)?;
        let signed_at: i64 = std::str::from_utf8(timestamp)
            .ok()
            .filter(|t| !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| fail("x-firstcome-timestamp must be Unix seconds"))?;
        if now_s.abs_diff(signed_at) > self.max_age_s {
            return Err(fail(&format!(
                "the signature is stale: signed more than {} s from now",
                self.max_age_s
            )));
        }
        let signature = hex::decode(signature)
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or_else(|| fail("x-firstcome-signature must be 64 hex digits"))?;
        let mut mac = self.key.clone();
        mac.update(timestamp);
        mac.update(b".");
        mac.update(user);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| fail("the signature does not match the user and timestamp"))?;
        let user = std::str::from_utf8(user).map_err(|_| fail("x-firstcome-user must be UTF-8"))?;
        UserId::parse(user)
            .map_err(|e| fail(&format!("x-firstcome-user is not a valid user id: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn signed(user: &str, at: i64, secret: &str) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{at}.{user}").as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(USER_HEADER, user.parse().unwrap());
        headers.insert(TIMESTAMP_HEADER, at.to_string().parse().unwrap());
        headers.insert(
            SIGNATURE_HEADER,
            hex::encode(mac.finalize().into_bytes()).parse().unwrap(),
        );
        headers
    }

    fn verifier() -> SignedHeader {
        SignedHeader::from_config(&SignedHeaderConfig {
            secret: Some(SECRET.into()),
            max_age_s: 60,
        })
        .unwrap()
    }

    #[test]
    fn accepts_a_fresh_signature_only() {
        let v = verifier();
        let now = 1_800_000_000;
        assert_eq!(
            v.verify_at(&signed("alice", now, SECRET), now)
                .unwrap()
                .as_str(),
            "alice"
        );
        assert_eq!(
            v.verify_at(&signed("alice", now - 60, SECRET), now)
                .unwrap()
                .as_str(),
            "alice"
        );
        let stale = v
            .verify_at(&signed("alice", now - 61, SECRET), now)
            .unwrap_err();
        assert!(stale.message.contains("stale"), "{}", stale.message);
        assert!(
            v.verify_at(&signed("alice", now + 61, SECRET), now)
                .is_err()
        );
        let wrong_key = v
            .verify_at(
                &signed("alice", now, "another-secret-of-32-bytes-or-more!"),
                now,
            )
            .unwrap_err();
        assert_eq!(wrong_key.status, 401);
        // The user header swapped under a valid signature.
        let mut swapped = signed("alice", now, SECRET);
        swapped.insert(USER_HEADER, "bob".parse().unwrap());
        assert!(v.verify_at(&swapped, now).is_err());
        // Unsigned: only the user header.
        let mut bare = HeaderMap::new();
        bare.insert(USER_HEADER, "alice".parse().unwrap());
        assert!(
            v.verify_at(&bare, now)
                .unwrap_err()
                .message
                .contains("missing")
        );
    }

    #[test]
    fn refuses_short_secrets() {
        let e = SignedHeader::from_config(&SignedHeaderConfig {
            secret: Some("short".into()),
            max_age_s: 60,
        })
        .unwrap_err();
        assert!(e.contains("32 bytes") && !e.contains("short"), "{e}");
    }
}
