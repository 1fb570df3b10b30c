//! `auth.mode = "jwt"`: `Authorization: Bearer <token>`, verified with `jsonwebtoken`.
//!
//! - Keys: a JWKS (`auth.jwks`, a file or an `http(s)` URL) for the asymmetric algorithms, and
//!   `auth.hs256_secret` for HS256. A token's `alg` must be one of `auth.algorithms` and of
//!   its key's family (an HS256 token is never checked against a public key); `none` does not
//!   parse. Keys the token embeds (`jwk`, `jku`) are ignored.
//! - The JWKS is read again every `auth.jwks_max_age_s` (a removed key stops working then),
//!   and when a token names a key it lacks, at most once per `auth.jwks_refetch_s` (a new
//!   key works as soon as it is published).
//! - `exp` is required; `exp` and `nbf` are checked with `auth.leeway_s`; `iss` and `aud` when
//!   configured. The shopper is the `auth.user_claim` claim (a string, or a whole number),
//!   parsed by `UserId::parse`.
//! - A verified token is remembered, keyed by its SHA-256 digest (the token itself is never
//!   kept or logged), until its `exp`: a shopper's repeated requests are verified once.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use super::unauthenticated;
use crate::error::ApiError;
use firstcome_core::clock::now_ms;
use firstcome_core::user::UserId;
use firstcome_platform::config::AuthConfig;

/// Longest token accepted, in bytes; identity providers' tokens are a few hundred to a few
/// thousand.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// Shortest HS256 secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// Verified tokens remembered at most.
const TOKEN_CACHE_ENTRIES: usize = 200_000;
const CHALLENGE: &str = "Bearer";
const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// Where the JWKS comes from.
#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Url(String),
}

/// One verification key of the JWKS.
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The JWKS as last read.
struct KeySet {
    keys: Vec<Key>,
    read: bool,
}

/// A token verified earlier: whom it names, until when (Unix seconds).
#[derive(Clone)]
struct Verified {
    user: UserId,
    exp: i64,
}

/// The verifier of bearer tokens.
pub struct JwtVerifier {
    source: Option<Source>,
    hs256: Option<DecodingKey>,
    algorithms: Vec<Algorithm>,
    validation: Validation,
    user_claim: String,
    keys: RwLock<Arc<KeySet>>,
    /// When the JWKS was last read (or tried), for the refetch and age rules; held while one
    /// read runs so that others wait for it rather than read too.
    last_read: tokio::sync::Mutex<Option<Instant>>,
    last_success: RwLock<Option<Instant>>,
    max_age: Duration,
    refetch: Duration,
    verified: quick_cache::sync::Cache<[u8; 32], Verified>,
    /// Raised each time a key set is put in force: a verification that began under an older
    /// one is not kept in the cache.
    generation: std::sync::atomic::AtomicU64,
    client: reqwest::Client,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("source", &self.source)
            .field("algorithms", &self.algorithms)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

fn parse_algorithms(config: &AuthConfig) -> Result<Vec<Algorithm>, String> {
    if config.algorithms.is_empty() {
        let mut algorithms = Vec::new();
        if config.jwks.is_some() {
            algorithms.extend(ASYMMETRIC);
        }
        if config.hs256_secret.is_some() {
            algorithms.push(Algorithm::HS256);
        }
        return Ok(algorithms);
    }
    config
        .algorithms
        .iter()
        .map(|name| {
            let alg: Algorithm = name.parse().map_err(|_| {
                format!(
                    "auth.algorithms: {name:?} is not an algorithm; use RS256, RS384, RS512, \
                     PS256, PS384, PS512, ES256, EdDSA or HS256"
                )
            })?;
            match alg {
                Algorithm::HS384 | Algorithm::HS512 | Algorithm::ES384 => Err(format!(
                    "auth.algorithms: {name} is not supported; HS256 is the only shared-secret \
                     algorithm and ES256 the elliptic-curve one"
                )),
                Algorithm::HS256 if config.hs256_secret.is_none() => {
                    Err("auth.algorithms lists HS256 but auth.hs256_secret is not set".to_owned())
                }
                Algorithm::HS256 => Ok(alg),
                _ if config.jwks.is_none() => Err(format!(
                    "auth.algorithms lists {name} but auth.jwks (its public keys) is not set"
                )),
                _ => Ok(alg),
            }
        })
        .collect()
}

impl JwtVerifier {
    /// Checks the settings and reads the JWKS once: a file that cannot be read or holds no
    /// usable key refuses the start; a URL that does not answer is logged and tried again.
    pub async fn from_config(config: &AuthConfig) -> Result<Self, String> {
        if config.jwks.is_none() && config.hs256_secret.is_none() {
            return Err(
                "auth.mode = \"jwt\" needs auth.jwks (a JWKS file or URL of your \
                 identity provider) or auth.hs256_secret"
                    .into(),
            );
        }
        let hs256 = match config.hs256_secret.as_ref().map(|s| s.expose()) {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(format!(
                    "auth.hs256_secret must be at least {MIN_SECRET_BYTES} bytes (for example \
                     `openssl rand -hex 32`)"
                ));
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        if config.user_claim.trim().is_empty() {
            return Err("auth.user_claim must name a claim (default \"sub\")".into());
        }
        let algorithms = parse_algorithms(config)?;
        if algorithms.is_empty() {
            return Err("auth.algorithms is empty: list at least one".into());
        }
        let source = config.jwks.as_deref().map(|jwks| {
            if jwks.starts_with("https://") || jwks.starts_with("http://") {
                Source::Url(jwks.to_owned())
            } else {
                Source::File(PathBuf::from(jwks))
            }
        });
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_s;
        validation.validate_nbf = true;
        // An empty setting (`FIRSTCOME_AUTH__ISSUER=` in a compose file) is no setting.
        let issuer = config.issuer.as_deref().filter(|s| !s.is_empty());
        let audience = config.audience.as_deref().filter(|s| !s.is_empty());
        validation.validate_aud = audience.is_some();
        let mut required = vec!["exp"];
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("cannot make an HTTP client for auth.jwks: {e}"))?;
        let verifier = Self {
            source: source.clone(),
            hs256,
            algorithms,
            validation,
            user_claim: config.user_claim.clone(),
            keys: RwLock::new(Arc::new(KeySet {
                keys: Vec::new(),
                read: false,
            })),
            last_read: tokio::sync::Mutex::new(None),
            last_success: RwLock::new(None),
            max_age: Duration::from_secs(config.jwks_max_age_s),
            refetch: Duration::from_secs(config.jwks_refetch_s),
            verified: quick_cache::sync::Cache::new(TOKEN_CACHE_ENTRIES),
            generation: Default::default(),
            client,
        };
        if let Some(source) = &source {
            match verifier.read_keys(source).await {
                Ok(keys) => verifier.install(keys),
                Err(e) if matches!(source, Source::File(_)) => {
                    return Err(format!("auth.jwks: {e}"));
                }
                Err(e) => tracing::warn!(error = %e,
                    "auth.jwks: cannot read the identity provider's keys yet; bearer tokens are \
                     answered 503 until it answers"),
            }
            *verifier.last_read.lock().await = Some(Instant::now());
        }
        Ok(verifier)
    }

    /// Reads the JWKS, keeping the keys this host can verify with (RSA, P-256 and Ed25519
    /// public keys); a key of another kind is skipped with a log line.
    async fn read_keys(&self, source: &Source) -> Result<Vec<Key>, String> {
        let bytes = match source {
            Source::File(path) => {
                let meta = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if !meta.is_file() || meta.len() > MAX_JWKS_BYTES {
                    return Err(format!(
                        "{} is not a file of at most {MAX_JWKS_BYTES} bytes",
                        path.display()
                    ));
                }
                tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            Source::Url(url) => self.fetch(url).await?,
        };
        let document: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let Some(entries) = document.get("keys").and_then(|k| k.as_array()) else {
            return Err("the JWKS has no \"keys\" array".into());
        };
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(entry.clone()) {
                Ok(jwk) => jwk,
                Err(e) => {
                    tracing::warn!(key = i, error = %e, "JWKS key skipped: not a key this host reads");
                    continue;
                }
            };
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                tracing::warn!(
                    key = i,
                    "JWKS key skipped: a shared secret (kty oct) does not belong in a JWKS"
                );
                continue;
            }
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg: jwk
                        .common
                        .key_algorithm
                        .and_then(|a| format!("{a:?}").parse().ok()),
                    key,
                }),
                Err(e) => tracing::warn!(key = i, error = %e, "JWKS key skipped"),
            }
        }
        if keys.is_empty() {
            return Err("the JWKS holds no RSA, EC (P-256) or Ed25519 public key".into());
        }
        Ok(keys)
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let shown = firstcome_core::bounded::redact_url(url);
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {shown}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {shown} answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {shown}: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_JWKS_BYTES {
                return Err(format!("GET {shown}: larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        Ok(body)
    }

    /// Puts a newly read key set in force and empties the token cache: a token verified under
    /// a key that is gone, or whose material changed under the same `kid`, stops working now
    /// (the others are verified again once, at their next use).
    fn install(&self, keys: Vec<Key>) {
        *self.keys.write().expect("never poisoned") = Arc::new(KeySet { keys, read: true });
        *self.last_success.write().expect("never poisoned") = Some(Instant::now());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.verified.clear();
    }

    /// Reads the JWKS again if `due` says so, one read at a time.
    async fn reread(&self, due: impl Fn(Option<Instant>) -> bool) {
        let Some(source) = &self.source else {
            return;
        };
        let mut last = self.last_read.lock().await;
        if !due(*last) {
            return;
        }
        *last = Some(Instant::now());
        match self.read_keys(source).await {
            Ok(keys) => self.install(keys),
            Err(e) => {
                tracing::warn!(error = %e, "auth.jwks: cannot read the keys; keeping the ones in force")
            }
        }
    }

    /// Reads the JWKS again when the keys in force are older than `auth.jwks_max_age_s` (or
    /// were never read, at most once per `auth.jwks_refetch_s`).
    pub async fn refresh_if_stale(&self) {
        let success = *self.last_success.read().expect("never poisoned");
        let stale = success.is_none_or(|at| at.elapsed() >= self.max_age);
        if stale {
            let refetch = self.refetch;
            self.reread(|last| last.is_none_or(|at| at.elapsed() >= refetch.min(self.max_age)))
                .await;
        }
    }

    /// The shopper the request's bearer token names.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<UserId, ApiError> {
        let fail = |m: &str| unauthenticated(CHALLENGE, m);
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = match (values.next(), values.next()) {
            (Some(value), None) => value.as_bytes(),
            (None, _) => return Err(fail("no credential: send Authorization: Bearer <token>")),
            (Some(_), Some(_)) => return Err(fail("the Authorization header is sent twice")),
        };
        let token = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
            .ok_or_else(|| fail("the Authorization header must be Bearer <token>"))?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(fail(&format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let token = std::str::from_utf8(token).map_err(|_| fail("the token is not a JWT"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now_s = now_ms() / 1000;
        if let Some(known) = self.verified.get(&digest)
            && known.exp > now_s
        {
            return Ok(known.user);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let verified = self.verify_token(token).await?;
        self.verified.insert(digest, verified.clone());
        // Keys put in force meanwhile: the entry may stem from the old ones.
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            self.verified.remove(&digest);
        }
        Ok(verified.user)
    }

    async fn verify_token(&self, token: &str) -> Result<Verified, ApiError> {
        let fail = |m: &str| unauthenticated(CHALLENGE, m);
        let head = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => {
                fail("the token's header names no algorithm this host accepts")
            }
            _ => fail("the token is not a JWT"),
        })?;
        let alg = head.alg;
        if !self.algorithms.contains(&alg) {
            return Err(fail(&format!(
                "the token's algorithm {alg:?} is not accepted"
            )));
        }
        let key = self.key_for(alg, head.kid.as_deref()).await?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| fail(&reason(&e)))?
        .claims;
        let user = match claims.get(&self.user_claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(_) => {
                return Err(fail(&format!(
                    "the token's {} claim is not a string",
                    self.user_claim
                )));
            }
            None => {
                return Err(fail(&format!("the token has no {} claim", self.user_claim)));
            }
        };
        let user = UserId::parse(&user).map_err(|e| {
            fail(&format!(
                "the token's {} claim is not a valid user id: {e}",
                self.user_claim
            ))
        })?;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_f64)
            .map_or(0, |exp| exp as i64);
        Ok(Verified { user, exp })
    }

    /// The key that checks a token of `alg` naming `kid`.
    async fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<DecodingKey, ApiError> {
        if alg == Algorithm::HS256 {
            return self
                .hs256
                .clone()
                .ok_or_else(|| unauthenticated(CHALLENGE, "HS256 tokens are not accepted here"));
        }
        if let Some(key) = self.find(alg, kid)? {
            return Ok(key);
        }
        // A key published after the last read: read again, at most once per refetch interval.
        let refetch = self.refetch;
        self.reread(|last| last.is_none_or(|at| at.elapsed() >= refetch))
            .await;
        if let Some(key) = self.find(alg, kid)? {
            return Ok(key);
        }
        if !self.keys.read().expect("never poisoned").read {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the identity provider's keys (auth.jwks) could not be read yet; try again",
            ));
        }
        Err(unauthenticated(
            CHALLENGE,
            match kid {
                Some(_) => "the token is signed with a key this host does not know (unknown kid)",
                None => "the token names no key (kid) and no single key of its algorithm is known",
            },
        ))
    }

    fn find(&self, alg: Algorithm, kid: Option<&str>) -> Result<Option<DecodingKey>, ApiError> {
        let set = self.keys.read().expect("never poisoned").clone();
        let fits = |k: &&Key| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
        let found = match kid {
            Some(kid) => set.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut candidates = set.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        };
        match found {
            Some(key) if !fits(&key) => Err(unauthenticated(
                CHALLENGE,
                format!("the token's algorithm {alg:?} does not fit its key"),
            )),
            Some(key) => Ok(Some(key.key.clone())),
            None => Ok(None),
        }
    }
}

/// What was wrong with a token, for its `401` (never the token itself).
fn reason(error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "the token is for another audience (aud)".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
        ErrorKind::Json(_) => {
            "the token's claims are malformed (a registered claim of the wrong type)".into()
        }
        _ => "the token is not a valid JWT".into(),
    }
}
