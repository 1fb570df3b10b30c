//! Shoppers are who they say they are: verified identity on every shopper route (JWT with
//! RS256, ES256, EdDSA and HS256 tokens minted by PyJWT, signed headers signed by Python's
//! hmac), no shopper acting as or reading another, limits per shopper and per address, caps on
//! live streams, unannounced campaigns and private statistics kept private, and a host that
//! refuses to face a network unprotected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use firstcome::app::App;
use firstcome_core::campaign::{CampaignLimits, CampaignSpec};
use firstcome_platform::config::{AuthMode, Config};

use crate::helpers::{
    ADMIN_TOKEN, Backend, Backends, TestApp, spawn_app_on, spec, test_config, unique,
};

/// Runs `tests/tools/tokens.py` (PyJWT, cryptography, hmac) with `request`.
fn tokens_tool(request: Value) -> Value {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tools/tokens.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tokens.py failed (is PyJWT installed? tests/run.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A private key made by `openssl genpkey` for `alg` (RS256, ES256 or EdDSA), in PEM.
fn private_key(alg: &str) -> String {
    let args: &[&str] = match alg {
        "RS256" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "ES256" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "EdDSA" => &["-algorithm", "ed25519"],
        other => panic!("no key for {other}"),
    };
    let out = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// A signing key of the test's identity provider.
#[derive(Clone, Debug)]
struct SigningKey {
    alg: &'static str,
    kid: String,
    pem: String,
}

impl SigningKey {
    fn new(alg: &'static str, kid: &str) -> Self {
        Self {
            alg,
            kid: kid.into(),
            pem: private_key(alg),
        }
    }
}

const HS256_SECRET: &str = "test-hs256-secret-of-at-least-32-bytes!!";
const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "firstcome";

fn jwks(keys: &[&SigningKey]) -> Value {
    tokens_tool(json!({
        "op": "jwks",
        "keys": keys.iter().map(|k| json!({"key": k.pem, "kid": k.kid, "alg": k.alg})).collect::<Vec<_>>(),
    }))
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The usual claims for `user`, valid for an hour.
fn claims(user: &str) -> Value {
    json!({"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": now_s() + 3600, "iat": now_s()})
}

/// Tokens signed by `key` (or HS256 with `secret` when `key` is `None`) for each claim set.
fn mint(key: Option<&SigningKey>, all_claims: &[Value]) -> Vec<String> {
    let specs: Vec<Value> = all_claims
        .iter()
        .map(|claims| match key {
            Some(k) => json!({"alg": k.alg, "key": k.pem, "kid": k.kid, "claims": claims}),
            None => json!({"alg": "HS256", "key": HS256_SECRET, "claims": claims}),
        })
        .collect();
    serde_json::from_value(tokens_tool(json!({"op": "mint", "tokens": specs}))).unwrap()
}

fn mint_one(key: Option<&SigningKey>, claims: Value) -> String {
    mint(key, &[claims]).remove(0)
}

/// An HTTP answer: status, selected headers, JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let r = request.send().await.expect("the host answers");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (retry_after, www_authenticate) = (header("retry-after"), header("www-authenticate"));
    let status = r.status().as_u16();
    Answer {
        status,
        retry_after,
        www_authenticate,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

impl TestApp {
    async fn post_as(&self, token: Option<&str>, campaign: &str, body: Value) -> Answer {
        let mut request = self
            .client
            .post(self.url(&format!("/api/v1/campaigns/{campaign}/requests")))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send(request).await
    }

    async fn get_as(&self, token: Option<&str>, path: &str) -> Answer {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send(request).await
    }
}

/// A host whose shoppers carry JWTs: a JWKS file with an RS256, an ES256 and an EdDSA key,
/// and an HS256 secret.
async fn jwt_host(backend: Backend, keys: &[&SigningKey]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(keys).to_string()).unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    spawn_app_on(backends, dir, |c| {
        c.auth.mode = Some(AuthMode::Jwt);
        c.auth.jwks = Some(jwks_file.display().to_string());
        c.auth.hs256_secret = Some(HS256_SECRET.into());
        c.auth.issuer = Some(ISSUER.into());
        c.auth.audience = Some(AUDIENCE.into());
    })
    .await
}

/// Every case of "anyone reads anyone's coupons, anyone spends another's chance" with its
/// right answer, under verified tokens of each algorithm.
async fn a_token_is_the_only_identity(backend: Backend) {
    let rsa = SigningKey::new("RS256", "rsa-1");
    let ec = SigningKey::new("ES256", "ec-1");
    let ed = SigningKey::new("EdDSA", "ed-1");
    let app = jwt_host(backend, &[&rsa, &ec, &ed]).await;
    let id = app.campaign(spec(3)).await;
    let alice = mint_one(Some(&rsa), claims("alice"));
    let mallory = mint_one(Some(&ed), claims("mallory"));

    // No credential: 401 with the challenge, on every shopper route.
    let none = app.post_as(None, &id, json!({"user_id": "alice"})).await;
    assert_eq!(
        (none.status, none.body["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert!(
        none.www_authenticate
            .as_deref()
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\""),
        "{none:?}"
    );
    for path in [
        format!("/api/v1/campaigns/{id}/requests/alice"),
        format!("/api/v1/campaigns/{id}/requests/alice/stream"),
        "/api/v1/users/alice/coupons".into(),
        "/api/v1/coupons/my?userId=alice".into(),
    ] {
        assert_eq!(app.get_as(None, &path).await.status, 401, "{path}");
    }
    let legacy = send(
        app.client
            .post(app.url("/api/v1/coupons/request"))
            .json(&json!({"userId": "alice", "promotionId": id})),
    )
    .await;
    assert_eq!(legacy.status, 401);

    // Mallory cannot spend bob's chance nor invent shoppers to drain the sale.
    for victim in ["bob", "bot-1", "bot-2", "bot-3"] {
        let a = app
            .post_as(Some(&mallory), &id, json!({"user_id": victim}))
            .await;
        assert_eq!(
            (a.status, a.body["code"].as_str()),
            (403, Some("forbidden")),
            "{a:?}"
        );
    }
    let legacy = send(
        app.client
            .post(app.url("/api/v1/coupons/request"))
            .bearer_auth(&mallory)
            .json(&json!({"userId": "bob", "promotionId": id})),
    )
    .await;
    assert_eq!(legacy.status, 403);

    // Alice asks for herself (with or without naming herself), once.
    let a = app.post_as(Some(&alice), &id, json!({})).await;
    assert_eq!(a.status, 202, "{a:?}");
    let again = app
        .post_as(Some(&alice), &id, json!({"user_id": "alice"}))
        .await;
    assert_eq!(again.body["code"], "duplicate_request");
    // Bob's chance is intact; ES256, EdDSA and HS256 tokens work as well.
    let bob = mint_one(Some(&ec), claims("bob"));
    assert_eq!(
        app.post_as(Some(&bob), &id, json!({"user_id": "bob"}))
            .await
            .status,
        202
    );
    let carol = mint_one(None, claims("carol"));
    assert_eq!(app.post_as(Some(&carol), &id, json!({})).await.status, 202);
    let late = app.post_as(Some(&mallory), &id, json!({})).await;
    assert_eq!(late.body["code"], "sold_out", "{late:?}");
    app.wait_issued(&id, 3, 30).await;

    // Reads: one's own answers; another's is 404, held coupon or not.
    let mine = app
        .get_as(
            Some(&alice),
            &format!("/api/v1/campaigns/{id}/requests/alice"),
        )
        .await;
    assert_eq!(
        (mine.status, mine.body["status"].as_str()),
        (200, Some("issued"))
    );
    let code = mine.body["coupon"]["code"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v1/campaigns/{id}/requests/alice"),
        format!("/api/v1/campaigns/{id}/requests/alice/stream"),
        "/api/v1/users/alice/coupons".into(),
        "/api/v1/coupons/my?userId=alice".into(),
        format!("/api/v1/campaigns/{id}/requests/nobody"),
        "/api/v1/users/nobody/coupons".into(),
    ] {
        let theirs = app.get_as(Some(&mallory), &path).await;
        assert_eq!(theirs.status, 404, "{path}: {theirs:?}");
        assert!(
            !theirs.body.to_string().contains(&code),
            "{path} leaks the code"
        );
    }
    let own = app.get_as(Some(&alice), "/api/v1/coupons/my").await;
    assert_eq!(own.body["coupons"][0]["code"], code.as_str(), "{own:?}");
    let own = app
        .get_as(Some(&alice), "/api/v1/users/alice/coupons")
        .await;
    assert_eq!(own.body["coupons"][0]["code"], code.as_str());
    let coupons = crate::helpers::coupons(&app.backends.store, &id).await;
    let mut holders: Vec<_> = coupons.into_iter().map(|(user, _)| user).collect();
    holders.sort();
    assert_eq!(holders, ["alice", "bob", "carol"]);
    app.stop().await;
}
crate::on_all_backends!(token_identity, a_token_is_the_only_identity);

/// Tokens that must not pass, each with a message saying why and never quoting the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_are_refused_with_the_reason() {
    let rsa = SigningKey::new("RS256", "rsa-1");
    let stranger = SigningKey::new("RS256", "rsa-1");
    let app = jwt_host(Backend::Embedded, &[&rsa]).await;
    let id = app.campaign(spec(10)).await;
    let with = |patch: Value| {
        let mut c = claims("alice");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let public_pem = {
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(rsa.pem.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            mint_one(Some(&rsa), with(json!({"exp": now_s() - 3600}))),
            "expired",
        ),
        (
            "not yet valid",
            mint_one(Some(&rsa), with(json!({"nbf": now_s() + 3600}))),
            "not valid yet",
        ),
        (
            "another audience",
            mint_one(Some(&rsa), with(json!({"aud": "another-app"}))),
            "audience",
        ),
        (
            "another issuer",
            mint_one(Some(&rsa), with(json!({"iss": "https://evil.test/"}))),
            "issuer",
        ),
        (
            "no exp",
            mint_one(Some(&rsa), with(json!({"exp": null}))),
            "exp",
        ),
        (
            "a key of someone else",
            mint_one(Some(&stranger), claims("alice")),
            "signature",
        ),
        (
            "an unknown kid",
            mint_one(
                Some(&SigningKey {
                    kid: "nope".into(),
                    ..rsa.clone()
                }),
                claims("alice"),
            ),
            "unknown kid",
        ),
        (
            "a format character in sub",
            mint_one(Some(&rsa), with(json!({"sub": "al\u{200b}ice"}))),
            "not a valid user id",
        ),
        (
            "an object for sub",
            mint_one(Some(&rsa), with(json!({"sub": {"id": 1}}))),
            "malformed",
        ),
        // alg "none", hand-made: PyJWT refuses to make one.
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims("alice"))
            ),
            "algorithm",
        ),
        // HS256 signed with the RSA public key as the secret (algorithm confusion): checked
        // against the HS256 secret only, never against a public key.
        (
            "HS256 with the public key",
            serde_json::from_value(tokens_tool(json!({
                "op": "confused", "key": public_pem, "kid": "rsa-1", "claims": claims("alice"),
            })))
            .unwrap(),
            "signature",
        ),
        (
            "16 KiB",
            mint_one(Some(&rsa), with(json!({"padding": "x".repeat(16 * 1024)}))),
            "longer than",
        ),
        ("not a JWT", "hello".into(), "not"),
    ];
    for (case, token, why) in cases {
        let a = app.post_as(Some(&token), &id, json!({})).await;
        assert_eq!(
            (a.status, a.body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{case}: {a:?}"
        );
        let message = a.body["message"].as_str().unwrap();
        assert!(message.contains(why), "{case}: {message}");
        assert!(
            !message.contains(&token[..token.len().min(20)]),
            "{case} quotes the token"
        );
        assert!(
            a.www_authenticate.unwrap().contains("invalid_token"),
            "{case}"
        );
    }
    // A lower-case scheme is fine (RFC 9110: the scheme is case-insensitive).
    let alice = mint_one(Some(&rsa), claims("alice"));
    let lower = send(
        app.client
            .post(app.url(&format!("/api/v1/campaigns/{id}/requests")))
            .header("authorization", format!("bearer {alice}"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(lower.status, 202, "{lower:?}");
    // Nothing was admitted by any refused token: alice's one request is the only one.
    app.wait_issued(&id, 1, 20).await;
    let (_, view) = app.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(view["admitted"], 1, "{view}");
    assert_eq!(
        crate::helpers::coupons(&app.backends.store, &id)
            .await
            .len(),
        1
    );
    app.stop().await;
}

/// Serves a JWKS document over HTTP that the test can change; answers `(url, document)`.
async fn jwks_server(initial: Value) -> (String, Arc<Mutex<Value>>) {
    let document = Arc::new(Mutex::new(initial));
    let served = document.clone();
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let served = served.clone();
            async move { axum::Json(served.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/.well-known/jwks.json"), document)
}

/// A key rotated at the identity provider while the host runs: the new key works within the
/// refetch interval, the removed one stops working within the JWKS's maximum age, even for a
/// token the host had verified and remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_rotate_at_the_identity_provider() {
    let old = SigningKey::new("RS256", "2026-old");
    let new = SigningKey::new("ES256", "2026-new");
    let (url, document) = jwks_server(jwks(&[&old])).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.auth.mode = Some(AuthMode::Jwt);
        c.auth.jwks = Some(url.clone());
        c.auth.jwks_refetch_s = 1;
        c.auth.jwks_max_age_s = 2;
    })
    .await;
    let id = app.campaign(spec(10)).await;
    let by_old = mint_one(Some(&old), claims("alice"));
    let by_new = mint_one(Some(&new), claims("bob"));
    let path = format!("/api/v1/campaigns/{id}/requests/someone-else");
    // A read of someone else answers 404 once the token verified, 401 when it did not.
    async fn status(app: &TestApp, path: &str, token: &str) -> Answer {
        app.get_as(Some(token), path).await
    }
    let status = |token| status(&app, &path, token);
    assert_eq!(status(&by_old).await.status, 404);
    assert_eq!(
        status(&by_new).await.status,
        401,
        "unknown before it is published"
    );
    *document.lock().unwrap() = jwks(&[&old, &new]);
    let published = Instant::now();
    while status(&by_new).await.status != 404 {
        assert!(
            published.elapsed() < Duration::from_secs(5),
            "the new key never worked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    *document.lock().unwrap() = jwks(&[&new]);
    let removed = Instant::now();
    while status(&by_old).await.status != 401 {
        assert!(
            removed.elapsed() < Duration::from_secs(6),
            "the removed key still works"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status(&by_new).await.status, 404);
    app.stop().await;
}

/// A gateway signs the shopper's id: only a fresh, valid signature over the very user header
/// names a shopper.
async fn a_signed_header_names_the_shopper(backend: Backend) {
    const SECRET: &str = "gateway-secret-0123456789abcdef-0123";
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.auth.mode = Some(AuthMode::SignedHeader);
        c.auth.signed_header.secret = Some(SECRET.into());
        c.auth.signed_header.max_age_s = 30;
    })
    .await;
    let id = app.campaign(spec(5)).await;
    let sign = |user: &str, at: i64| -> String {
        serde_json::from_value(tokens_tool(
            json!({"op": "sign", "secret": SECRET, "user": user, "timestamp": at}),
        ))
        .unwrap()
    };
    let post = |headers: Vec<(&'static str, String)>, body: Value| {
        let mut request = app
            .client
            .post(app.url(&format!("/api/v1/campaigns/{id}/requests")))
            .json(&body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        send(request)
    };
    let signed = |user: &str, at: i64, sig: String| {
        vec![
            ("x-firstcome-user", user.to_owned()),
            ("x-firstcome-timestamp", at.to_string()),
            ("x-firstcome-signature", sig),
        ]
    };
    let now = now_s();
    // Unsigned copies of the header, a stale signature, a signature over another user.
    let bare = post(vec![("x-firstcome-user", "alice".into())], json!({})).await;
    assert_eq!(bare.status, 401, "{bare:?}");
    let stale = post(
        signed("alice", now - 120, sign("alice", now - 120)),
        json!({}),
    )
    .await;
    assert!(
        stale.body["message"].as_str().unwrap().contains("stale"),
        "{stale:?}"
    );
    let swapped = post(signed("bob", now, sign("alice", now)), json!({})).await;
    assert_eq!(swapped.status, 401);
    let forged = post(signed("alice", now, "00".repeat(32)), json!({})).await;
    assert_eq!(forged.status, 401);
    let other = post(
        signed("alice", now, sign("alice", now)),
        json!({"user_id": "bob"}),
    )
    .await;
    assert_eq!(other.status, 403);
    // Alice, signed: admitted, and she reads her own request, nobody else's.
    let ok = post(signed("alice", now, sign("alice", now)), json!({})).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    app.wait_issued(&id, 1, 20).await;
    let read = |user: &str| {
        let mut request = app
            .client
            .get(app.url(&format!("/api/v1/campaigns/{id}/requests/{user}")));
        for (name, value) in signed("alice", now, sign("alice", now)) {
            request = request.header(name, value);
        }
        send(request)
    };
    assert_eq!(read("alice").await.body["status"], "issued");
    assert_eq!(read("bob").await.status, 404);
    app.stop().await;
}
crate::on_all_backends!(signed_header, a_signed_header_names_the_shopper);

/// A host on a non-loopback address with no `auth.mode` refuses to start and says how to
/// choose; on loopback it runs open and says so in readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_host_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let config = Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        database_url: Some(backends.database_url.clone()),
        ..test_config(dir.path())
    };
    let refused = App::build_with(
        config.clone(),
        backends.store.clone(),
        backends.admission.clone(),
    )
    .await
    .expect_err("an unprotected host on 0.0.0.0 must not start");
    let message = format!("{refused:#}");
    assert!(
        message.contains("auth.mode") && message.contains("jwt"),
        "{message}"
    );
    // Named secrets that are too short are refused without being quoted.
    let mut weak = config.clone();
    weak.auth.mode = Some(AuthMode::Jwt);
    weak.auth.hs256_secret = Some("hunter2".into());
    let refused = App::build_with(weak, backends.store.clone(), backends.admission.clone())
        .await
        .expect_err("a short secret is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("32 bytes") && !message.contains("hunter2"),
        "{message}"
    );
    let mut no_keys = config;
    no_keys.auth.mode = Some(AuthMode::Jwt);
    let message = format!(
        "{:#}",
        App::build_with(no_keys, backends.store.clone(), backends.admission.clone())
            .await
            .unwrap_err()
    );
    assert!(message.contains("auth.jwks"), "{message}");

    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    let (status, ready) = app.get("/health/ready").await;
    assert_eq!(
        (status, ready["shopper_auth"].as_str()),
        (200, Some("open")),
        "{ready}"
    );
    app.stop().await;
}

/// A campaign announced next month is unknown to the public routes until then; statistics
/// need the admin token unless the campaign makes them public.
async fn unannounced_campaigns_and_private_statistics(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    let next_month = (chrono::Utc::now() + chrono::Duration::days(30)).fixed_offset();
    let secret = app
        .campaign(CampaignSpec {
            name: "Secret sale".into(),
            announce_at: Some(next_month),
            opens_at: Some(next_month),
            ..spec(5)
        })
        .await;
    for path in [
        format!("/api/v1/campaigns/{secret}"),
        format!("/api/v1/campaigns/{secret}/stats"),
        format!("/api/v1/campaigns/{secret}/stats/stream"),
        format!("/api/v1/campaigns/{secret}/requests/alice"),
        format!("/api/v1/campaigns/{secret}/requests/alice/stream"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("unknown_campaign")),
            "{path}"
        );
    }
    let (_, list) = app.get("/api/v1/campaigns").await;
    assert!(!list.to_string().contains("Secret sale"), "{list}");
    let (status, body) = app.request(&secret, "alice").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_campaign"))
    );
    let admin = app
        .client
        .get(app.url("/api/v1/admin/campaigns"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(admin.contains(&secret), "{admin}");

    let private = app.campaign(spec(5)).await;
    let (status, body) = app.get(&format!("/api/v1/campaigns/{private}/stats")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("private_stats")),
        "{body}"
    );
    let (status, _) = app
        .get(&format!("/api/v1/campaigns/{private}/stats/stream"))
        .await;
    assert_eq!(status, 404);
    let with_token = app
        .client
        .get(app.url(&format!("/api/v1/campaigns/{private}/stats")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let public = app
        .campaign(CampaignSpec {
            public_stats: true,
            ..spec(5)
        })
        .await;
    assert_eq!(
        app.get(&format!("/api/v1/campaigns/{public}/stats"))
            .await
            .0,
        200
    );
    app.stop().await;
}
crate::on_all_backends!(private, unannounced_campaigns_and_private_statistics);

/// One shopper sending 200 requests in a second is answered 429 with Retry-After, while 100
/// other shoppers asking at the same time are answered as without limits: exactly `capacity`
/// admitted, no 429 among them.
async fn a_greedy_shopper_is_slowed_alone(backend: Backend) {
    let rsa = SigningKey::new("RS256", "rsa-1");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&rsa]).to_string()).unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.auth.mode = Some(AuthMode::Jwt);
        c.auth.jwks = Some(jwks_file.display().to_string());
        // The documented defaults.
        c.limits = Default::default();
    })
    .await;
    const CAPACITY: i64 = 60;
    let id = app.campaign(spec(CAPACITY)).await;
    let users: Vec<String> = (0..100).map(|i| format!("shopper-{i}")).collect();
    let all_claims: Vec<Value> = users
        .iter()
        .map(|u| json!({"sub": u, "exp": now_s() + 3600}))
        .collect();
    let tokens = mint(Some(&rsa), &all_claims);
    let greedy = mint_one(Some(&rsa), json!({"sub": "greedy", "exp": now_s() + 3600}));
    // Verify every token once before the storm, as a shopper's page load would.
    for token in tokens.iter().chain([&greedy]) {
        assert_eq!(
            app.get_as(Some(token), "/api/v1/coupons/my").await.status,
            200
        );
    }
    let started = Instant::now();
    let greedy_answers = futures::stream::iter(0..200)
        .map(|_| app.post_as(Some(&greedy), &id, json!({})))
        .buffer_unordered(50)
        .collect::<Vec<_>>();
    let others = futures::stream::iter(tokens.iter())
        .map(|t| app.post_as(Some(t), &id, json!({})))
        .buffer_unordered(100)
        .collect::<Vec<_>>();
    let (greedy_answers, others) = tokio::join!(greedy_answers, others);
    let took = started.elapsed();
    let limited: Vec<&Answer> = greedy_answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        limited.len() >= 150,
        "only {} of 200 limited in {took:?}",
        limited.len()
    );
    for a in &limited {
        assert_eq!(a.body["code"], "rate_limited");
        assert!(a.retry_after.as_deref().unwrap().parse::<u64>().unwrap() >= 1);
    }
    let mut count: HashMap<u16, usize> = HashMap::new();
    for a in &others {
        *count.entry(a.status).or_default() += 1;
    }
    assert_eq!(count.get(&429), None, "{count:?}");
    let greedy_won = greedy_answers.iter().any(|a| a.status == 202) as i64;
    assert_eq!(
        count.get(&202).copied().unwrap_or(0) as i64 + greedy_won,
        CAPACITY,
        "{count:?}"
    );
    assert_eq!(
        count.get(&410).copied().unwrap_or(0) as i64,
        100 - CAPACITY + greedy_won
    );
    app.wait_issued(&id, CAPACITY, 30).await;
    assert_eq!(
        crate::helpers::coupons(&app.backends.store, &id)
            .await
            .len() as i64,
        CAPACITY
    );
    app.stop().await;
}
crate::on_all_backends!(greedy, a_greedy_shopper_is_slowed_alone);

/// Per-address buckets count the client behind a trusted proxy, never an address a client
/// claims; a campaign's own `[limits]` replace the host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn addresses_come_from_trusted_proxies_only() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
        // Behind a proxy the admin plane is placed deliberately (the proxy here forwards
        // everything; this test reads only shopper routes).
        c.admin_listen = Some("shared".into());
        c.limits = Default::default();
    })
    .await;
    let id = app
        .campaign(CampaignSpec {
            limits: CampaignLimits {
                per_address_per_s: Some(1),
                per_address_burst: Some(5),
                ..Default::default()
            },
            ..spec(1_000)
        })
        .await;
    let post = |user: String, from: &'static str| {
        send(
            app.client
                .post(app.url(&format!("/api/v1/campaigns/{id}/requests")))
                .header("x-forwarded-for", from)
                .json(&json!({"user_id": user})),
        )
    };
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(post(format!("a-{i}"), "198.51.100.1").await.status);
    }
    assert_eq!(statuses, [202, 202, 202, 202, 202, 429, 429, 429]);
    // Another address behind the same proxy is not affected.
    assert_eq!(post("b-0".into(), "198.51.100.2").await.status, 202);
    // A client's own claim, prepended to the proxy's entry, changes nothing.
    assert_eq!(
        post("a-9".into(), "203.0.113.1, 198.51.100.1").await.status,
        429
    );
    app.stop().await;

    // Without trusted proxies, X-Forwarded-For is ignored: every request is the socket's.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| c.limits = Default::default()).await;
    let id = app
        .campaign(CampaignSpec {
            limits: CampaignLimits {
                per_address_per_s: Some(1),
                per_address_burst: Some(3),
                ..Default::default()
            },
            ..spec(1_000)
        })
        .await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let a = send(
            app.client
                .post(app.url(&format!("/api/v1/campaigns/{id}/requests")))
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .json(&json!({"user_id": format!("u-{i}")})),
        )
        .await;
        statuses.push(a.status);
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
    app.stop().await;
}

/// One address opening 50 live streams gets the excess refused, admission for others stays
/// prompt, and a stream ends at its maximum lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_address_cannot_hold_every_stream() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.limits.streams_per_address = 8;
        c.limits.stream_max_lifetime_s = 3;
        c.http.max_connections = 50;
    })
    .await;
    let id = app
        .campaign(CampaignSpec {
            public_stats: true,
            ..spec(100)
        })
        .await;
    let stream_client = reqwest::Client::new();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..50 {
        let r = stream_client
            .get(app.url(&format!("/api/v1/campaigns/{id}/stats/stream")))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => open.push(r),
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["code"], "too_many_streams");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((open.len(), refused), (8, 42));
    // Admission for others answers promptly while the streams are open.
    let started = Instant::now();
    for i in 0..20 {
        assert_eq!(app.request(&id, &unique(&format!("u{i}"))).await.0, 202);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Each stream ends at its lifetime; the places come free.
    let ended = Instant::now();
    for r in open {
        let _ = tokio::time::timeout(Duration::from_secs(10), r.bytes())
            .await
            .expect("the stream ends at its lifetime");
    }
    assert!(ended.elapsed() < Duration::from_secs(8));
    let again = stream_client
        .get(app.url(&format!("/api/v1/campaigns/{id}/stats/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    app.stop().await;
}
