//! Consumer plugins as WebAssembly components: the reference plugins against a real SMTP
//! server (aiosmtpd) and a local FCM stand-in that checks requests as Google would; plugins
//! that trap, loop, hoard memory, flood, refuse or overreach; live swaps under load; and the
//! refusal of components that must not load.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Json, Router};
use firstcome_core::campaign::Campaign;
use firstcome_store::UserProfile;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, Backends, firstcome_output, recipient, spawn_app, spawn_app_on, spec, unique,
    wait_for, wasm, with_history, with_plugin,
};

// ---------------------------------------------------------------------------------------
// A real SMTP server: aiosmtpd from PyPI, writing what it receives to a maildir.

pub(crate) struct SmtpServer {
    port: u16,
    mbox: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        let port = crate::helpers::free_port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&mbox)
            .spawn()
            .expect("python3 -m aiosmtpd runs (pip install aiosmtpd)");
        wait_for(30, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
        .expect("aiosmtpd listens");
        Self {
            port,
            mbox,
            child,
            _dir: dir,
        }
    }

    /// (to, subject, body) of every message received.
    pub(crate) fn messages(&self) -> Vec<(String, String, String)> {
        let files = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.mbox.join(sub)).ok())
            .flatten()
            .flatten();
        files
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .map(|m| {
                // Headers, with folded (continued) lines joined.
                let head = m.split_once("\n\n").map_or(m.as_str(), |(h, _)| h);
                let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
                let header = |name: &str| {
                    unfolded
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .unwrap_or_default()
                        .to_owned()
                };
                let body = m
                    .split_once("\n\n")
                    .map(|(_, b)| b.to_owned())
                    .unwrap_or_default();
                (header("To"), header("Subject"), body)
            })
            .collect()
    }
}

impl SmtpServer {
    /// Points a host's email capability at this server (plain SMTP on loopback).
    pub(crate) fn configure(&self, c: &mut firstcome_platform::config::Config) {
        c.email.smtp_host = Some("127.0.0.1".into());
        c.email.smtp_port = Some(self.port);
        c.email.tls = firstcome_platform::config::SmtpTls::None;
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// FCM's HTTP v1 API as Google checks it: an OAuth token endpoint that verifies the
// service account's signed JWT grant, and `messages:send` that checks the bearer token and
// the message's shape. Google itself is unreachable from here.

const PROJECT: &str = "fc-test";
const KEY_ID: &str = "test-key-1";
const CLIENT_EMAIL: &str = "firstcome@fc-test.iam.gserviceaccount.com";

#[derive(Default)]
pub(crate) struct Fcm {
    public_pem: Vec<u8>,
    token_url: String,
    tokens_issued: AtomicUsize,
    /// Answer the first N sends with 503 (FCM overloaded).
    fail_first: AtomicUsize,
    pub(crate) sent: Mutex<Vec<Value>>,
    pub(crate) refused: Mutex<Vec<String>>,
}

pub(crate) struct FcmStandIn {
    pub(crate) state: Arc<Fcm>,
    pub(crate) base_url: String,
    pub(crate) key_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FcmStandIn {
    pub(crate) async fn start(fail_first: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("key.pem"), dir.path().join("pub.pem"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private.to_str().unwrap(),
        ]);
        openssl(&[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Fcm {
            public_pem: std::fs::read(&public).unwrap(),
            token_url: format!("{base_url}/token"),
            fail_first: AtomicUsize::new(fail_first),
            ..Fcm::default()
        });
        let key_file = dir.path().join("service-account.json");
        let key = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": KEY_ID,
            "private_key": std::fs::read_to_string(&private).unwrap(),
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": state.token_url,
        });
        std::fs::write(&key_file, key.to_string()).unwrap();
        let app = Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{project}/{method}", post(send))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            state,
            base_url,
            key_file,
            _dir: dir,
        }
    }
}

async fn token(
    State(fcm): State<Arc<Fcm>>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let refuse = |why: String| {
        fcm.refused.lock().unwrap().push(why.clone());
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": why})),
        )
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(format!("grant_type {:?}", form.get("grant_type")));
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion".into());
    };
    let header = match jsonwebtoken::decode_header(assertion) {
        Ok(h) => h,
        Err(e) => return refuse(format!("header: {e}")),
    };
    if header.alg != jsonwebtoken::Algorithm::RS256 || header.kid.as_deref() != Some(KEY_ID) {
        return refuse(format!("alg {:?} kid {:?}", header.alg, header.kid));
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&fcm.token_url]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&fcm.public_pem).unwrap();
    let claims = match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return refuse(format!("signature or claims: {e}")),
    };
    if claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
        return refuse(format!("scope {}", claims["scope"]));
    }
    let lifetime = claims["exp"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(claims["iat"].as_u64().unwrap_or(0));
    if lifetime == 0 || lifetime > 3600 {
        return refuse(format!("lifetime {lifetime}s"));
    }
    let n = fcm.tokens_issued.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        Json(
            json!({"access_token": format!("ya29.test-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
        ),
    )
}

async fn send(
    State(fcm): State<Arc<Fcm>>,
    axum::extract::Path((project, method)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let error = |status: StatusCode, why: String| {
        fcm.refused.lock().unwrap().push(why.clone());
        (
            status,
            Json(json!({"error": {"code": status.as_u16(), "message": why}})),
        )
    };
    if project != PROJECT || method != "messages:send" {
        return error(StatusCode::NOT_FOUND, format!("path {project}/{method}"));
    }
    let issued = fcm.tokens_issued.load(Ordering::SeqCst);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !(0..issued).any(|n| bearer == format!("Bearer ya29.test-{n}")) {
        return error(StatusCode::UNAUTHORIZED, format!("bearer {bearer:?}"));
    }
    let m = &body["message"];
    let strings = m["data"]
        .as_object()
        .is_none_or(|d| d.values().all(Value::is_string));
    if !m["token"].is_string()
        || !m["notification"]["title"].is_string()
        || !m["notification"]["body"].is_string()
        || !strings
    {
        return error(StatusCode::BAD_REQUEST, format!("INVALID_ARGUMENT: {body}"));
    }
    if fcm
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": 503, "status": "UNAVAILABLE"}})),
        );
    }
    if m["token"] == "unregistered-token" {
        return error(StatusCode::NOT_FOUND, "UNREGISTERED".into());
    }
    fcm.sent.lock().unwrap().push(body.clone());
    (
        StatusCode::OK,
        Json(json!({"name": format!("projects/{PROJECT}/messages/{}", uuid::Uuid::new_v4())})),
    )
}

pub(crate) fn user(id: &str, email: Option<&str>, token: Option<&str>) -> UserProfile {
    UserProfile {
        user_id: id.to_owned(),
        email: email.map(str::to_owned),
        fcm_token: token.map(str::to_owned),
        gender: Some("female".into()),
        age_group: Some("20s".into()),
    }
}

/// The three reference plugins on one campaign: each winner gets one email at the real SMTP
/// server and (with a token) one push at the FCM stand-in, even though FCM's first answer is
/// a 503 (the retry does not email twice); history and stats record each coupon once.
async fn reference_plugins_notify_record_and_count(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let fcm = FcmStandIn::start(1).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let (key, fcm_url) = (fcm.key_file.clone(), fcm.base_url.clone());
    let app = spawn_app_on(backends, dir, |c| {
        smtp.configure(c);
        c.email.from = "Coupons <coupons@shop.test>".into();
        c.push.service_account_file = Some(key);
        c.push.fcm_url = fcm_url;
    })
    .await;
    let mut users: Vec<UserProfile> = (0..9)
        .map(|i| {
            user(
                &format!("u{i}"),
                Some(&format!("u{i}@shop.test")),
                Some(&format!("device-{i}")),
            )
        })
        .collect();
    users.push(user("mail-only", Some("mail-only@shop.test"), None));
    users.push(user("nobody", None, None));
    app.backends.store.upsert_users(&users).await.unwrap();

    let mut spec = with_plugin(
        with_history(spec(11)),
        "notification",
        &wasm("notification"),
        &["email", "push"],
        &[("email_subject", "Your {campaign} coupon: {code}")],
    );
    spec = with_plugin(spec, "stats", &wasm("stats"), &["stats"], &[]);
    let id = app.campaign(spec).await;
    for u in &users {
        assert_eq!(app.request(&id, &u.user_id).await.0, 202);
    }
    app.wait_issued(&id, 11, 20).await;
    let store = &app.backends.store;
    wait_for(30, || async {
        smtp.messages().len() >= 10
            && fcm.state.sent.lock().unwrap().len() >= 9
            && store.history_of_campaign(&id).await.unwrap().len() == 11
            && store.campaign_stats(&id).await.unwrap().get("issued") == Some(&11)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "every coupon notified, recorded and counted: {} mails, {} pushes, mbox {:?}",
            smtp.messages().len(),
            fcm.state.sent.lock().unwrap().len(),
            std::fs::read_to_string(&smtp.mbox).map(|t| t.len())
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mails = smtp.messages();
    let to: BTreeSet<&str> = mails.iter().map(|(to, _, _)| to.as_str()).collect();
    assert_eq!(
        mails.len(),
        10,
        "one email per user with an address, none twice: {to:?}"
    );
    assert!(to.contains("mail-only@shop.test") && to.contains("u0@shop.test"));
    let coupons = crate::helpers::coupons(store, &id).await;
    assert_eq!(coupons.len(), 11);
    for (_, subject, body) in &mails {
        assert!(
            subject.starts_with("Your Test campaign coupon: "),
            "{subject}"
        );
        assert!(body.contains("Test campaign"), "{body}");
    }
    let sent = fcm.state.sent.lock().unwrap().clone();
    let devices: BTreeSet<String> = sent
        .iter()
        .map(|m| m["message"]["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent.len(), 9, "one push per device, none twice");
    assert_eq!(devices, (0..9).map(|i| format!("device-{i}")).collect());
    assert_eq!(sent[0]["message"]["data"]["campaign_id"], id.as_str());
    assert_eq!(
        fcm.state.tokens_issued.load(Ordering::SeqCst),
        1,
        "the access token is cached"
    );
    assert!(
        fcm.state.refused.lock().unwrap().is_empty(),
        "{:?}",
        fcm.state.refused.lock().unwrap()
    );

    let history = store.history_of_campaign(&id).await.unwrap();
    let version = firstcome_plugin::runtime::version_of(&std::fs::read(wasm("history")).unwrap());
    assert!(
        history.iter().all(|h| h.handled_by == version),
        "the version that handled each event"
    );
    let stats = store.campaign_stats(&id).await.unwrap();
    assert_eq!(
        (
            stats["revenue"],
            stats["gender.female"],
            stats["age_group.20s"]
        ),
        (11_000, 11, 11)
    );
    app.stop().await;
}

crate::on_all_backends!(reference_plugins, reference_plugins_notify_record_and_count);

/// What the admin API says about each plugin.
pub(crate) async fn plugin_statuses(app: &crate::helpers::TestApp) -> Vec<Value> {
    let body: Value = app
        .client
        .get(app.url("/api/v1/admin/plugins"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["plugins"].as_array().unwrap().clone()
}

/// Plugins that trap, never return, hoard memory, flood the host, refuse, or call what they
/// were not granted: each is stopped, its event retried (or not, when retrying cannot help)
/// and dead-lettered with the reason, while a healthy campaign beside them keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_plugins_are_stopped_and_dead_lettered() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.consumers.max_retries = 2;
        c.plugins.max_output_bytes = 256 * 1024;
    })
    .await;
    let healthy = app.campaign(with_history(spec(40))).await;
    // mode → (attempts, what the dead letter's error says)
    let cases = [
        ("trap", 3, "trapped"),
        ("loop", 3, "did not finish within"),
        ("alloc", 3, "memory limit of 16 MiB"),
        ("flood", 3, "output limit exceeded"),
        ("retryable", 3, "retryable error: misbehave: try later"),
        ("permanent", 1, "permanent error: misbehave: refuses"),
        ("ungranted", 1, "capability `email` is not granted"),
    ];
    let mut bad = HashMap::new();
    for (mode, attempts, reason) in cases {
        let mut s = with_plugin(
            spec(1),
            "bad",
            &wasm("misbehave"),
            &["history", "kv"],
            &[("mode", mode)],
        );
        let plugin = s.plugins.get_mut("bad").unwrap();
        plugin.timeout_ms = Some(300);
        plugin.memory_mb = Some(16);
        let id = app.campaign(s).await;
        assert_eq!(app.request(&id, "victim").await.0, 202);
        bad.insert(id, (mode, attempts, reason));
    }
    for i in 0..40 {
        assert_eq!(app.request(&healthy, &format!("h{i}")).await.0, 202);
    }
    let bus = app.platform.bus().clone();
    wait_for(60, || async {
        bus.fetch("coupon-issued.DLT", 100).await.unwrap().len() >= cases.len()
    })
    .await
    .expect("every bad event dead-lettered");
    let letters = bus.fetch("coupon-issued.DLT", 100).await.unwrap();
    assert_eq!(letters.len(), cases.len());
    for letter in &letters {
        let m = &letter.message;
        let envelope: Value = serde_json::from_str(&m.payload).unwrap();
        let (mode, attempts, reason) = bad[envelope["campaign_id"].as_str().unwrap()];
        assert_eq!(m.headers["dlt.consumer_group"], "bad", "{mode}");
        assert_eq!(
            m.headers["dlt.attempts"],
            attempts.to_string(),
            "{mode}: {:?}",
            m.headers
        );
        assert!(
            m.headers["dlt.error"].contains(reason),
            "{mode}: {}",
            m.headers["dlt.error"]
        );
    }
    wait_for(30, || async {
        app.backends
            .store
            .history_of_campaign(&healthy)
            .await
            .unwrap()
            .len()
            == 40
    })
    .await
    .expect("the healthy campaign keeps flowing");
    assert_eq!(app.get("/health/live").await.0, 200);
    let statuses = plugin_statuses(&app).await;
    let statuses: Vec<Value> = statuses
        .into_iter()
        .filter(|p| p["role"] == "bad")
        .collect();
    let traps: u64 = statuses
        .iter()
        .map(|p| p["counters"]["traps"].as_u64().unwrap())
        .sum();
    let timeouts: u64 = statuses
        .iter()
        .map(|p| p["counters"]["timeouts"].as_u64().unwrap())
        .sum();
    let denied: u64 = statuses
        .iter()
        .map(|p| p["counters"]["denied"].as_u64().unwrap())
        .sum();
    assert_eq!((traps, timeouts, denied), (9, 3, 1), "{statuses:?}");
    app.stop().await;
}

/// A component file with the same code and another hash: a second version of a plugin.
fn second_version(original: &Path, dir: &Path, tag: &str) -> PathBuf {
    let mut bytes = std::fs::read(original).unwrap();
    // A custom section (id 0): name, then payload; components allow them anywhere.
    let name = b"firstcome-test-version";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 sizes");
    bytes.extend_from_slice(&[0, size as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join(format!("history-{tag}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Rewriting a campaign file while its coupons are being issued swaps its history plugin:
/// every event is recorded exactly once, the ones before the swap by the old version and the
/// ones after by the new, and another campaign keeps running the old version meanwhile.
async fn a_swap_under_load_loses_and_repeats_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let files = tempfile::tempdir().unwrap();
    let old = wasm("history");
    let new = second_version(&old, files.path(), "v2");
    let (old_version, new_version) = (
        firstcome_plugin::runtime::version_of(&std::fs::read(&old).unwrap()),
        firstcome_plugin::runtime::version_of(&std::fs::read(&new).unwrap()),
    );
    let id = unique("swap");
    let other = app.campaign(with_history(spec(50))).await;
    let file = app
        .platform
        .config()
        .campaigns_dir()
        .join(format!("{id}.toml"));
    std::fs::write(&file, with_history(spec(300)).to_toml()).unwrap();
    wait_for(10, || async { app.platform.campaign(&id).is_some() })
        .await
        .expect("campaign applied");

    let load = {
        let (client, url, id) = (
            app.client.clone(),
            app.url("/api/v1/coupons/request"),
            id.clone(),
        );
        let (platform, new_version) = (app.platform.clone(), new_version.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                // Half the requests, then wait for the new version to be in service, so that
                // the swap lands while events flow however fast the group keeps up.
                if i == 150 {
                    let swapped = || async {
                        platform
                            .plugins()
                            .plugin(&id, "history")
                            .is_some_and(|p| p.version() == new_version)
                    };
                    wait_for(60, swapped)
                        .await
                        .expect("the new version in service");
                }
                let r = client
                    .post(&url)
                    .json(&json!({"userId": format!("u{i}"), "promotionId": id}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let store = &app.backends.store;
    wait_for(30, || async {
        store.history_of_campaign(&id).await.unwrap().len() >= 60
    })
    .await
    .expect("history under way");
    let swapped = with_plugin(spec(300), "history", &new, &["history"], &[]);
    std::fs::write(&file, swapped.to_toml()).unwrap();
    for i in 0..50 {
        app.request(&other, &format!("o{i}")).await;
    }
    load.await.unwrap();
    wait_for(60, || async {
        store.history_of_campaign(&id).await.unwrap().len() >= 300
    })
    .await
    .expect("every event recorded");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let history = store.history_of_campaign(&id).await.unwrap();
    let events: BTreeSet<&str> = history.iter().map(|h| h.event_id.as_str()).collect();
    assert_eq!(
        (history.len(), events.len()),
        (300, 300),
        "nothing lost, nothing twice"
    );
    let versions: Vec<&str> = history.iter().map(|h| h.handled_by.as_str()).collect();
    let first_new = versions
        .iter()
        .position(|v| *v == new_version)
        .expect("the new version took over");
    assert!(first_new >= 60, "the swap came after 60 events");
    assert!(versions[..first_new].iter().all(|v| *v == old_version));
    assert!(
        versions[first_new..].iter().all(|v| *v == new_version),
        "no event went back to the old version"
    );
    wait_for(30, || async {
        store.history_of_campaign(&other).await.unwrap().len() == 50
    })
    .await
    .expect("the other campaign");
    let others = store.history_of_campaign(&other).await.unwrap();
    assert!(
        others.iter().all(|h| h.handled_by == old_version),
        "two versions side by side"
    );
    assert_eq!(app.platform.plugins().swaps(), 1);
    app.stop().await;
}

crate::on_all_backends!(live_swap, a_swap_under_load_loses_and_repeats_nothing);

/// A plugin that must not load is refused with a reason that says what to fix, and the
/// version in service stays; through the folder, the admin API shows the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugins_are_refused_and_the_running_one_stays() {
    let app = spawn_app(Backend::Embedded).await;
    let files = tempfile::tempdir().unwrap();
    let id = unique("refuse");
    let good = with_history(spec(10));
    app.platform
        .apply_campaign(Campaign::new(&id, good.clone()).unwrap())
        .await
        .unwrap();
    let running = app
        .platform
        .plugins()
        .plugin(&id, "history")
        .unwrap()
        .version()
        .to_owned();

    let core = files.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let garbage = files.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm at all").unwrap();
    let mut wrong_hash = with_history(spec(10));
    wrong_hash.plugins.get_mut("history").unwrap().sha256 = Some("0".repeat(64));
    let cases = [
        (
            with_plugin(
                spec(10),
                "history",
                &files.path().join("missing.wasm"),
                &[],
                &[],
            ),
            "missing.wasm",
        ),
        (wrong_hash, "sha256 mismatch"),
        (
            with_plugin(spec(10), "history", &core, &[], &[]),
            "core WebAssembly module, not a component",
        ),
        (
            with_plugin(spec(10), "history", &garbage, &[], &[]),
            "not a WebAssembly component",
        ),
        (
            with_plugin(spec(10), "history", &wasm("rogue"), &[], &[]),
            "imports `acme:rogue/socket`",
        ),
        (
            with_plugin(
                spec(10),
                "notification",
                &wasm("notification"),
                &["email"],
                &[("email_subject", "{nope}")],
            ),
            "init refused its settings: email_subject: unknown placeholder {nope}",
        ),
        (
            with_plugin(
                spec(10),
                "notification",
                &wasm("notification"),
                &["email"],
                &[("colour", "red")],
            ),
            "unknown setting \"colour\"",
        ),
    ];
    for (bad, reason) in cases {
        let err = app
            .platform
            .apply_campaign(Campaign::new(&id, bad).unwrap())
            .await
            .expect_err(reason)
            .to_string();
        assert!(err.contains(reason), "wanted {reason:?} in {err:?}");
        assert_eq!(
            app.platform
                .plugins()
                .plugin(&id, "history")
                .unwrap()
                .version(),
            running,
            "the old version stays"
        );
        assert!(app.platform.plugins().plugin(&id, "notification").is_none());
    }

    // The admin API refuses the same with a 422 and the reason.
    let mut body =
        serde_json::to_value(with_plugin(spec(10), "history", &wasm("rogue"), &[], &[])).unwrap();
    body["name"] = json!("Rogue");
    let r = app
        .client
        .put(app.url(&format!("/api/v1/admin/campaigns/{id}")))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["code"], "invalid_plugin");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("acme:rogue/socket"),
        "{answer}"
    );

    // Through the folder: the file is refused, the reason is shown, the old version stays.
    let file = app
        .platform
        .config()
        .campaigns_dir()
        .join(format!("{id}.toml"));
    std::fs::write(
        &file,
        with_plugin(spec(10), "history", &core, &[], &[]).to_toml(),
    )
    .unwrap();
    wait_for(10, || async { app.platform.rejections().contains_key(&id) })
        .await
        .expect("refused");
    assert!(app.platform.rejections()[&id].contains("core WebAssembly module"));
    assert_eq!(
        app.platform
            .plugins()
            .plugin(&id, "history")
            .unwrap()
            .version(),
        running
    );
    app.stop().await;
}

/// The sample event shipped for plugin authors (`examples/events/coupon-issued.json`).
pub(crate) fn sample_event() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("examples/events/coupon-issued.json")
}

/// `firstcome plugin test` runs a component on an event and prints each capability call.
#[test]
fn plugin_test_prints_each_capability_call() {
    let event = sample_event();
    let notification = wasm("notification");
    let (code, out, err) = firstcome_output(&[
        "plugin",
        "test",
        notification.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--setting",
        "push_title=Hi {user}",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("email.send to=\"u1@shop.test\" subject=\"Your Spring coupon\""),
        "{out}"
    );
    assert!(
        out.contains("push.send token=\"device-1\" title=\"Hi u1\""),
        "{out}"
    );
    assert!(out.contains("expires 2026-12-31"), "{out}");
    assert!(out.contains("result: ok"), "{out}");

    let stats = wasm("stats");
    let (code, out, _) = firstcome_output(&[
        "plugin",
        "test",
        stats.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("stats.increment \"revenue\" +5000") && out.contains("stats.publish"),
        "{out}"
    );

    let misbehave = wasm("misbehave");
    let (code, out, _) = firstcome_output(&[
        "plugin",
        "test",
        misbehave.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--setting",
        "mode=ungranted",
        "--grants",
        "kv,history",
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("capability `email` is not granted") && out.contains("dead-lettered at once"),
        "{out}"
    );

    let (code, _, err) = firstcome_output(&[
        "plugin",
        "test",
        stats.to_str().unwrap(),
        "--event",
        stats.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("reading the event"), "{err}");
}

/// `campaign validate` loads each plugin the way the host would.
#[test]
fn campaign_validate_checks_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, with_history(spec(5)).to_toml()).unwrap();
    // As a host would: from its plugins folder only (the file's folder unless set).
    let (code, _, err) = firstcome_output(&["campaign", "validate", good.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("is outside plugins.dir"), "{err}");
    let built = wasm("history");
    let plugins = built.parent().unwrap().to_str().unwrap().to_owned();
    let validate = |file: &std::path::Path| {
        crate::helpers::firstcome_run(
            &["campaign", "validate", file.to_str().unwrap()],
            &[("FIRSTCOME_PLUGINS__DIR", &plugins)],
        )
    };
    let (code, out, err) = validate(&good);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("history plugin sha256:"), "{out}");
    let rogue = dir.path().join("rogue.toml");
    std::fs::write(
        &rogue,
        with_plugin(spec(5), "history", &wasm("rogue"), &[], &[]).to_toml(),
    )
    .unwrap();
    let (code, _, err) = validate(&rogue);
    assert_eq!(code, 2);
    assert!(
        err.contains("imports `acme:rogue/socket`, which this host does not offer"),
        "{err}"
    );
}

/// Runs `firstcome plugin new audit-trail --lang LANG` in a temporary folder: (the folder,
/// kept as long as it lives; the project).
pub(crate) fn plugin_new(lang: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = firstcome_output(&[
        "plugin",
        "new",
        "audit-trail",
        "--lang",
        lang,
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let project = dir.path().join("audit-trail");
    (dir, project)
}

/// `firstcome plugin new` makes a crate that passes its own test, builds to a component,
/// and runs in the sandbox.
#[test]
fn plugin_new_scaffolds_a_working_crate() {
    let (_dir, krate) = plugin_new("rust");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| krate.join("target"));
    for args in [
        &["test"][..],
        &["build", "--release", "--target", "wasm32-wasip2"][..],
    ] {
        let out = std::process::Command::new(&cargo)
            .current_dir(&krate)
            .args(args)
            .arg("--target-dir")
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let component = target.join("wasm32-wasip2/release/audit_trail.wasm");
    let event = sample_event();
    let (code, out, err) = firstcome_output(&[
        "plugin",
        "test",
        component.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("log.info \"u1 got coupon #1 of Spring\"")
            && out.contains("kv.increment \"issued.20s\" +1"),
        "{out}"
    );
}

/// The example plugin of `examples/`: several accounts on one device, and a domain past its
/// limit, are flagged in its key-value store and emailed to the operator, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fraud_watch_example_flags_shared_devices_and_busy_domains() {
    let smtp = SmtpServer::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| smtp.configure(c)).await;
    let users = [
        user("alice", Some("alice@farm.test"), Some("shared-device")),
        user("bob", Some("bob@farm.test"), Some("shared-device")),
        user("carol", Some("carol@farm.test"), Some("own-device")),
        user("dave", Some("dave@shop.test"), Some("shared-device")),
        user("erin", Some("erin@farm.test"), None),
    ];
    app.backends.store.upsert_users(&users).await.unwrap();
    // It tells devices apart by their push tokens, which only a role granted `push` sees; it
    // may email the desk, its one listed recipient, besides the event's shopper.
    let mut campaign = with_plugin(
        spec(10),
        "fraud-watch",
        &wasm("fraud_watch"),
        &["kv", "email", "push"],
        &[
            ("operator_email", "desk@shop.test"),
            ("max_per_domain", "3"),
        ],
    );
    recipient(&mut campaign, "fraud-watch", "desk@shop.test");
    let id = app.campaign(campaign).await;
    for u in &users {
        assert_eq!(app.request(&id, &u.user_id).await.0, 202);
    }
    app.wait_issued(&id, 5, 20).await;
    // bob and dave share alice's device; the fourth farm.test address crosses the limit of 3.
    wait_for(30, || async { smtp.messages().len() >= 3 })
        .await
        .expect("three flags emailed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 3, "{mails:?}");
    assert!(mails.iter().all(|(to, _, _)| to == "desk@shop.test"));
    let subjects: Vec<&str> = mails.iter().map(|(_, s, _)| s.as_str()).collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.contains("user bob shares a device with alice")),
        "{subjects:?}"
    );
    assert!(
        subjects
            .iter()
            .any(|s| s.contains("user dave shares a device with alice, bob")),
        "{subjects:?}"
    );
    assert!(
        subjects
            .iter()
            .any(|s| s.contains("4 coupons went to addresses at farm.test")),
        "{subjects:?}"
    );
    let scope = firstcome_store::Scope {
        campaign_id: id.clone(),
        role: "fraud-watch".into(),
    };
    let store = &app.backends.store;
    assert!(store.kv_get(&scope, "flag:bob").await.unwrap().is_some());
    assert!(store.kv_get(&scope, "flag:carol").await.unwrap().is_none());
    assert_eq!(
        store.kv_counter(&scope, "domain:farm.test").await.unwrap(),
        4
    );
    let other = firstcome_store::Scope {
        campaign_id: id.clone(),
        role: "history".into(),
    };
    assert!(
        store.kv_get(&other, "flag:bob").await.unwrap().is_none(),
        "kv is private to its role"
    );

    // Its init refuses a campaign without an operator address.
    let err = app
        .platform
        .apply_campaign(
            Campaign::new(
                &unique("fw"),
                with_plugin(
                    spec(1),
                    "fraud-watch",
                    &wasm("fraud_watch"),
                    &["kv", "email"],
                    &[],
                ),
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("operator_email"), "{err}");
    app.stop().await;
}
