//! Who a shopper is, and how much one shopper or one client address may ask.
//!
//! Every shopper route (admission, request status and stream, a user's coupons, the replaced
//! system's routes) takes a [`Shopper`]: the verified identity under `auth.mode = "jwt"` or
//! `"signed-header"`, nothing under `"open"`, and the client address (the socket's, or the one
//! a trusted proxy forwarded). [`Shopper::acting_as`] and [`Shopper::reading`] hold the rules:
//! a write naming someone else is `403 forbidden`; a read of someone else's request or coupons
//! is `404`, so that nobody learns whether another shopper holds a coupon.
//!
//! Layout: `jwt` (tokens, the JWKS and the cache of verified tokens), `signed_header` (the
//! HMAC a gateway in front signs), `address` (the client address and trusted proxies),
//! `limits` (token buckets on admission, caps on live streams).

mod address;
mod jwt;
mod limits;
mod signed_header;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, parse_user_id};
use firstcome_core::user::UserId;
use firstcome_platform::Platform;
use firstcome_platform::config::{AuthMode, Config};

pub use address::TrustedProxies;
pub use limits::{Limits, StreamPermit};

/// How shoppers are verified on this host, its limits and its trusted proxies. Built once at
/// start-up from the configuration ([`Shoppers::from_config`]), shared by every request.
#[derive(Debug)]
pub struct Shoppers {
    verifier: Verifier,
    limits: Limits,
    proxies: TrustedProxies,
}

#[derive(Debug)]
enum Verifier {
    Open,
    Jwt(Box<jwt::JwtVerifier>),
    SignedHeader(signed_header::SignedHeader),
}

impl Shoppers {
    /// Reads `auth.*`, `limits.*` and `trusted_proxies`. Refuses (with what to set) a host
    /// that listens on a non-loopback address with no `auth.mode`, a mode without its keys or
    /// secret, a secret shorter than 32 bytes, an unknown algorithm, a JWKS file that cannot be
    /// read and a proxy entry that is no address or CIDR block. A JWKS URL that does not
    /// answer yet is only logged: tokens are refused with `503` until it does.
    pub async fn from_config(config: &Config) -> Result<Self, String> {
        let mode = match &config.auth.mode {
            Some(mode) => mode.clone(),
            None if config.listen.ip().is_loopback() => AuthMode::Open,
            None => {
                return Err(format!(
                    "listening on {} (not loopback) with no auth.mode: anyone could ask for \
                     coupons as any shopper and read their codes. Set auth.mode = \"jwt\" (with \
                     auth.jwks or auth.hs256_secret) or \"signed-header\" (with \
                     auth.signed_header.secret), or auth.mode = \"open\" only behind a gateway \
                     that authenticates shoppers (FIRSTCOME_AUTH__MODE=...)",
                    config.listen
                ));
            }
        };
        let verifier = match mode {
            AuthMode::Open => {
                tracing::warn!(listen = %config.listen,
                    "auth.mode is open: shoppers are whoever the client names; put an \
                     authenticating gateway in front or set auth.mode = \"jwt\"");
                Verifier::Open
            }
            AuthMode::Jwt => {
                Verifier::Jwt(Box::new(jwt::JwtVerifier::from_config(&config.auth).await?))
            }
            AuthMode::SignedHeader => Verifier::SignedHeader(
                signed_header::SignedHeader::from_config(&config.auth.signed_header)?,
            ),
        };
        Ok(Self {
            verifier,
            limits: Limits::new(&config.limits),
            proxies: TrustedProxies::parse(&config.trusted_proxies)?,
        })
    }

    /// The mode in force: `jwt`, `signed-header` or `open` (`/health/ready`'s
    /// `shopper_auth`).
    pub fn mode(&self) -> &'static str {
        match self.verifier {
            Verifier::Open => "open",
            Verifier::Jwt(_) => "jwt",
            Verifier::SignedHeader(_) => "signed-header",
        }
    }

    /// The admission and stream limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Keeps the verifier's keys fresh (a JWKS URL or file read again every
    /// `auth.jwks_max_age_s`) and forgets idle limit buckets, until `shutdown`.
    pub async fn run_upkeep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            ticks += 1;
            if let Verifier::Jwt(jwt) = &self.verifier {
                jwt.refresh_if_stale().await;
            }
            if ticks.is_multiple_of(60) {
                self.limits.sweep();
            }
        }
    }

    /// The identity the request proves, or `None` in `open` mode.
    async fn identify(&self, headers: &HeaderMap) -> Result<Option<UserId>, ApiError> {
        match &self.verifier {
            Verifier::Open => Ok(None),
            Verifier::Jwt(jwt) => jwt.verify(headers).await.map(Some),
            Verifier::SignedHeader(signed) => signed.verify(headers).map(Some),
        }
    }
}

/// The caller of a shopper route: who it is (verified, or `None` in `open` mode) and where it
/// asks from. Extracting it answers `401 unauthenticated` when the credential is missing or
/// wrong.
#[derive(Debug)]
pub struct Shopper {
    identity: Option<UserId>,
    address: IpAddr,
    shoppers: Arc<Shoppers>,
}

impl Shopper {
    /// The user a write acts for: the verified identity (a `user_id` the client sent must be
    /// the same, else `403 forbidden`), or in `open` mode the `user_id` sent (required).
    pub fn acting_as(&self, claimed: Option<&str>) -> Result<UserId, ApiError> {
        match (&self.identity, claimed) {
            (Some(me), None) => Ok(me.clone()),
            (Some(me), Some(claimed)) => {
                let claimed = parse_user_id(claimed)?;
                if &claimed == me {
                    Ok(claimed)
                } else {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "user_id names another shopper than the credential: leave it out or \
                         send your own",
                    ))
                }
            }
            (None, Some(claimed)) => parse_user_id(claimed),
            (None, None) => Err(ApiError::unprocessable(
                "invalid_body",
                "user_id is required (this host's auth.mode is open)",
            )),
        }
    }

    /// The user whose request or coupons are read: `user_id` from the path, which must be the
    /// verified identity. Anyone else's answers `404`, whether or not they hold anything.
    pub fn reading(&self, user_id: &str) -> Result<UserId, ApiError> {
        let user = parse_user_id(user_id)?;
        match &self.identity {
            Some(me) if me != &user => Err(ApiError::not_found(
                "unknown_user",
                "no request or coupon of this user is visible with your credential",
            )),
            _ => Ok(user),
        }
    }

    /// The verified identity; `None` in `open` mode.
    pub fn own(&self) -> Option<UserId> {
        self.identity.clone()
    }

    /// The client's address.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Takes one admission request from `user`'s and the address's buckets, with the campaign's
    /// own rates when it sets any; `429 rate_limited` with `Retry-After` when one is empty.
    pub fn admit(
        &self,
        campaign: &firstcome_core::campaign::Campaign,
        user: &UserId,
    ) -> Result<(), ApiError> {
        self.shoppers.limits.admit(campaign, user, self.address)
    }

    /// A place among the live streams of this address (and of this shopper, when known);
    /// `429 too_many_streams` when either has its cap open.
    pub fn open_stream(&self, user: Option<&UserId>) -> Result<StreamPermit, ApiError> {
        self.shoppers.limits.open_stream(self.address, user)
    }

    /// How long a live stream may stay open.
    pub fn stream_lifetime(&self) -> Duration {
        self.shoppers.limits.stream_lifetime()
    }
}

impl FromRequestParts<Arc<Platform>> for Shopper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Platform>) -> Result<Self, ApiError> {
        let (shoppers, address) = shoppers_and_address(parts)?;
        let identity = shoppers.identify(&parts.headers).await?;
        Ok(Self {
            identity,
            address,
            shoppers,
        })
    }
}

/// The router's [`Shoppers`] and the request's client address: the socket's peer, or what a
/// trusted proxy says (the `address` module).
fn shoppers_and_address(parts: &Parts) -> Result<(Arc<Shoppers>, IpAddr), ApiError> {
    let shoppers = parts
        .extensions
        .get::<Arc<Shoppers>>()
        .cloned()
        .ok_or_else(|| ApiError::internal(&"the router was built without Shoppers"))?;
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let address = shoppers.proxies.client_address(peer, &parts.headers);
    Ok((shoppers, address))
}

pub(crate) use limits::bucket_address;

/// The client address of any request: the socket's peer, or what a trusted proxy says.
pub(crate) fn client_address(parts: &Parts) -> Result<IpAddr, ApiError> {
    shoppers_and_address(parts).map(|(_, address)| address)
}

/// The client address of a request that is not a shopper route (the statistics stream).
#[derive(Debug)]
pub struct Client {
    address: IpAddr,
    shoppers: Arc<Shoppers>,
}

impl Client {
    /// A place among the live streams of this address; `429 too_many_streams` when full.
    pub fn open_stream(&self) -> Result<StreamPermit, ApiError> {
        self.shoppers.limits.open_stream(self.address, None)
    }

    /// How long a live stream may stay open.
    pub fn stream_lifetime(&self) -> Duration {
        self.shoppers.limits.stream_lifetime()
    }
}

impl FromRequestParts<Arc<Platform>> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Platform>) -> Result<Self, ApiError> {
        let (shoppers, address) = shoppers_and_address(parts)?;
        Ok(Self { address, shoppers })
    }
}

/// `401 unauthenticated` saying what was wrong with the credential (never quoting it), with
/// the `WWW-Authenticate` challenge of the mode.
fn unauthenticated(challenge: &'static str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    let value = if challenge == "Bearer" {
        format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            message.replace(['"', '\\'], "'")
        )
    } else {
        challenge.to_owned()
    };
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        .with_header("www-authenticate", value)
}
