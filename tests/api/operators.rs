//! The operator plane: the admin listener apart from the shoppers', named credentials with
//! roles, slowed guessing, security headers, the audit log, and files the admin API cannot
//! be made to read.

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use firstcome_platform::config::{AdminRole, AdminTokenConfig};

use crate::helpers::{
    ADMIN_TOKEN, Backend, Backends, TestApp, spawn_app, spawn_app_on, spec, test_config, unique,
    wait_for, wasm, with_plugin,
};
use crate::on_all_backends;

const VIEWER: &str = "viewer-token-0123456789abcdef0123456789";
const OPERATOR: &str = "operator-token-0123456789abcdef01234567";

fn credential(name: &str, role: AdminRole, token: &str) -> AdminTokenConfig {
    AdminTokenConfig {
        name: name.into(),
        role,
        sha256: hex::encode(Sha256::digest(token.as_bytes())),
    }
}

/// A host with three named credentials (viewer `vera`, operator `otto`, and `admin` from
/// `admin_token`), its admin plane on a listener of its own when `apart`.
async fn host(backend: Backend, apart: bool) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    spawn_app_on(backends, dir, |c| {
        c.admin_tokens = vec![
            credential("vera", AdminRole::Viewer, VIEWER),
            credential("otto", AdminRole::Operator, OPERATOR),
        ];
        if apart {
            c.admin_listen = Some("127.0.0.1:0".into());
        }
    })
    .await
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app.client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.expect("the host answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn campaign_doc() -> Value {
    serde_json::to_value(spec(5)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_plane_is_served_apart_from_the_shoppers() {
    let app = host(Backend::Embedded, true).await;
    assert_ne!(app.address, app.admin_address);
    let id = app.campaign(spec(5)).await;
    let get = reqwest::Method::GET;
    let public = |path: &str| format!("{}{path}", app.address);
    let admin = |path: &str| format!("{}{path}", app.admin_address);
    // The admin plane's routes are not on the public listener, with a credential or without.
    for path in [
        "/api/v1/admin/campaigns",
        "/api/v1/admin/audit",
        "/metrics",
        "/",
        "/dashboard",
        "/live.js",
        "/api/openapi.json",
        "/api/docs/",
    ] {
        let (status, _, body) =
            call(&app, get.clone(), public(path), Some(ADMIN_TOKEN), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
        let (status, ..) = call(&app, get.clone(), admin(path), Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 200, "{path} on the admin listener");
    }
    // Nor does another method tell that they exist there.
    let (status, ..) = call(
        &app,
        reqwest::Method::POST,
        public("/api/v1/admin/audit"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, ..) = call(
        &app,
        reqwest::Method::POST,
        admin("/api/v1/admin/audit"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 405);
    // The shoppers' routes are not on the admin listener.
    let (status, ..) = call(
        &app,
        reqwest::Method::POST,
        admin(&format!("/api/v1/campaigns/{id}/requests")),
        None,
        Some(json!({"user_id": "alice"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, ..) = call(
        &app,
        reqwest::Method::POST,
        public(&format!("/api/v1/campaigns/{id}/requests")),
        None,
        Some(json!({"user_id": "alice"})),
    )
    .await;
    assert_eq!(status, 202);
    // Health and the campaigns' public views on both.
    for base in [&app.address, &app.admin_address] {
        let (status, ..) = call(
            &app,
            get.clone(),
            format!("{base}/health/ready"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200);
        let (status, ..) = call(
            &app,
            get.clone(),
            format!("{base}/api/v1/campaigns"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    // A private campaign's statistics: the admin credential counts on the admin listener only.
    let stats = format!("/api/v1/campaigns/{id}/stats");
    let (status, _, body) = call(&app, get.clone(), public(&stats), Some(ADMIN_TOKEN), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("private_stats"))
    );
    let (status, ..) = call(&app, get.clone(), admin(&stats), Some(VIEWER), None).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_public_address_needs_the_admin_plane_placed() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let mut config = test_config(dir.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.auth.mode = Some(firstcome_platform::config::AuthMode::Open);
    let refused = firstcome::app::App::build_with(
        config.clone(),
        backends.store.clone(),
        backends.admission.clone(),
    )
    .await
    .expect_err("a public address with the admin plane on it");
    let message = format!("{refused:#}");
    assert!(
        message.contains("admin_listen") && message.contains("not loopback"),
        "{message}"
    );
    // Chosen explicitly, it starts.
    config.admin_listen = Some("shared".into());
    let app = firstcome::app::App::build_with(
        config.clone(),
        backends.store.clone(),
        backends.admission.clone(),
    )
    .await
    .expect("admin_listen = shared is a choice");
    app.shutdown_token().cancel();
    drop(app);
    // A short admin token is refused, and the message does not repeat it.
    config.admin_token = Some("change-me".into());
    let refused =
        firstcome::app::App::build_with(config, backends.store.clone(), backends.admission.clone())
            .await
            .expect_err("a guessable admin token");
    let message = format!("{refused:#}");
    assert!(
        message.contains("shorter than 32") && !message.contains("change-me"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_what_it_may() {
    let app = host(Backend::Embedded, false).await;
    let admin = |path: &str| format!("{}{path}", app.admin_address);
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;
    let id = unique("roles");
    let user = json!({"email": "ann@shop.test"});
    // viewer: reads only.
    let (status, ..) = call(
        &app,
        get.clone(),
        admin("/api/v1/admin/campaigns"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = call(
        &app,
        put.clone(),
        admin(&format!("/api/v1/admin/campaigns/{id}")),
        Some(VIEWER),
        Some(campaign_doc()),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("viewer"));
    assert!(
        app.platform.campaign(&id).is_none(),
        "a refused call changes nothing"
    );
    // operator: campaigns, not users. The scheme's case does not matter.
    let (status, ..) = app
        .client
        .put(admin(&format!("/api/v1/admin/campaigns/{id}")))
        .header("authorization", format!("bearer {OPERATOR}"))
        .json(&campaign_doc())
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 201);
    let (status, ..) = call(
        &app,
        put.clone(),
        admin("/api/v1/admin/users/ann"),
        Some(OPERATOR),
        Some(user.clone()),
    )
    .await;
    assert_eq!(status, 403);
    // admin: everything.
    let (status, ..) = call(
        &app,
        put.clone(),
        admin("/api/v1/admin/users/ann"),
        Some(ADMIN_TOKEN),
        Some(user),
    )
    .await;
    assert_eq!(status, 200);
    // Who did what is in the audit log, which a viewer reads.
    let (status, _, page) = call(
        &app,
        get.clone(),
        admin("/api/v1/admin/audit"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let by = |action: &str| entries.iter().find(|e| e["action"] == action).cloned();
    let put_entry = by("campaign.put").expect("the campaign's creation");
    assert_eq!(put_entry["actor"], "otto");
    assert_eq!(put_entry["target"], id.as_str());
    assert!(put_entry["before_sha256"].is_null());
    assert_eq!(put_entry["after_sha256"].as_str().unwrap().len(), 64);
    let user_entry = by("user.put").expect("the profile's change");
    assert_eq!(user_entry["actor"], "admin");
    assert!(
        !user_entry.to_string().contains("ann@shop.test"),
        "no personal data"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_credentials_is_slowed_and_counted() {
    let app = spawn_app(Backend::Embedded).await;
    let url = app.url("/api/v1/admin/campaigns");
    let mut statuses = Vec::new();
    for i in 0..20 {
        let (status, headers, body) = call(
            &app,
            reqwest::Method::GET,
            url.clone(),
            Some(&format!("guess-{i}")),
            None,
        )
        .await;
        if status == 429 {
            assert_eq!(body["code"], "rate_limited");
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert!((10..=12).contains(&refused), "{statuses:?}");
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");
    // Now even the right token waits: the guess cannot be confirmed.
    let (status, ..) = call(&app, reqwest::Method::GET, url, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 429);
    let failures = app.metric("firstcome_admin_auth_failures_total").await;
    assert!(failures >= 10.0, "{failures}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    let app = spawn_app(Backend::Embedded).await;
    for path in [
        "/",
        "/api/docs/",
        "/api/v1/campaigns",
        "/no/such/route",
        "/health/live",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    // The live page holds no inline script or style (the policy would block them).
    let page = app.text("/").await;
    assert!(
        !page.contains("<script>") && !page.contains("<style>"),
        "{page}"
    );
    // Swagger UI does not keep a credential in the browser's storage.
    let init = app.text("/api/docs/swagger-initializer.js").await;
    assert!(
        init.contains("\"persistAuthorization\": false")
            || init.contains("persistAuthorization\":false"),
        "{init}"
    );
    app.stop().await;
}

/// A page of the audit log, read by the viewer.
async fn audit(app: &TestApp, query: String) -> Value {
    let url = format!("{}/api/v1/admin/audit?{query}", app.admin_address);
    let (status, _, page) = call(app, reqwest::Method::GET, url, Some(VIEWER), None).await;
    assert_eq!(status, 200, "{page}");
    page
}

/// Changes from the admin API and from the campaign folder are recorded, with who, what and
/// digests, paged and filtered, on every backend.
async fn the_audit_log_records_who_changed_what(backend: Backend) {
    let app = host(backend, false).await;
    let admin = |path: &str| format!("{}{path}", app.admin_address);
    let id = unique("audited");
    for capacity in [5, 6, 7] {
        let mut doc = campaign_doc();
        doc["capacity"] = json!(capacity);
        let (status, ..) = call(
            &app,
            reqwest::Method::PUT,
            admin(&format!("/api/v1/admin/campaigns/{id}")),
            Some(OPERATOR),
            Some(doc),
        )
        .await;
        assert!(status == 200 || status == 201);
    }
    let (status, ..) = call(
        &app,
        reqwest::Method::DELETE,
        admin(&format!("/api/v1/admin/campaigns/{id}")),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204);
    // A file dropped into the folder is recorded as the file's doing.
    let file_id = unique("filed");
    let dir = app.platform.config().campaigns_dir();
    std::fs::write(dir.join(format!("{file_id}.toml")), spec(3).to_toml()).unwrap();
    wait_for(20, || async { app.platform.campaign(&file_id).is_some() })
        .await
        .expect("the file is applied");
    // The removal is recorded in the background.
    wait_for(10, || async {
        audit(&app, format!("target={id}")).await["entries"]
            .as_array()
            .is_some_and(|e| e.len() == 4)
    })
    .await
    .expect("the removal recorded");
    let page = audit(&app, format!("target={id}")).await;
    let entries = page["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "campaign.delete",
            "campaign.put",
            "campaign.put",
            "campaign.put"
        ],
        "newest first"
    );
    // Each change's before is the previous one's after.
    for pair in entries.windows(2) {
        assert_eq!(pair[0]["before_sha256"], pair[1]["after_sha256"]);
    }
    assert_eq!(entries[0]["actor"], "admin");
    assert!(entries[0]["after_sha256"].is_null());
    // Paged: two, then the rest from `next`.
    let first = audit(&app, format!("target={id}&limit=2")).await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    let next = first["next"].as_i64().expect("a next page");
    let second = audit(&app, format!("target={id}&limit=2&before={next}")).await;
    assert_eq!(second["entries"].as_array().unwrap().len(), 2);
    assert_eq!(second["entries"][1]["action"], "campaign.put");
    // Filtered by actor and action.
    let filed = audit(&app, format!("actor=file&target={file_id}")).await;
    assert_eq!(filed["entries"][0]["action"], "campaign.file");
    let deletes = audit(&app, "action=campaign.delete".into()).await;
    assert!(
        deletes["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] == "campaign.delete")
    );
    // Bad paging is a 400 that changes nothing.
    let (status, _, body) = call(
        &app,
        reqwest::Method::GET,
        admin("/api/v1/admin/audit?limit=0"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_query"))
    );
    app.stop().await;
}

on_all_backends!(audit_log, the_audit_log_records_who_changed_what);

/// The admin API cannot be made to read a file outside the plugins folder, nor to say what a
/// refused file holds; the campaign folder does not follow links out of itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stay_in_their_folders_and_refusals_quote_nothing() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("history"), plugins.path().join("history.wasm")).unwrap();
    std::fs::write(
        plugins.path().join("notes.wasm"),
        "root:x:0:0:secret notes\n",
    )
    .unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("elsewhere.wasm"), "root:x:0:0\n").unwrap();
    let plugins_dir = plugins.path().to_owned();
    let app = spawn_app_on(backends, dir.clone(), |c| c.plugins.dir = Some(plugins_dir)).await;
    let put = |path: String, sha256: Option<String>| {
        let mut doc = with_plugin(
            spec(5),
            "history",
            std::path::Path::new(&path),
            &["history"],
            &[],
        );
        doc.plugins.get_mut("history").unwrap().sha256 = sha256;
        let app = &app;
        async move {
            let (status, _, body) = call(
                app,
                reqwest::Method::PUT,
                app.url(&format!("/api/v1/admin/campaigns/{}", unique("confined"))),
                Some(ADMIN_TOKEN),
                Some(serde_json::to_value(doc).unwrap()),
            )
            .await;
            (
                status,
                body["message"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let passwd_digest = hex::encode(Sha256::digest(std::fs::read("/etc/passwd").unwrap()));
    let database = dir.path().join("firstcome.db");
    for (path, sha256) in [
        ("/etc/passwd".to_owned(), Some("0".repeat(64))),
        ("../../../../etc/passwd".to_owned(), None),
        ("../../../../etc/passwd.wasm".to_owned(), None),
        (
            outside.path().join("elsewhere.wasm").display().to_string(),
            None,
        ),
        (database.display().to_string(), None),
        ("notes.wasm".to_owned(), None),
        ("history.wasm".to_owned(), Some("0".repeat(64))),
    ] {
        let (status, message) = put(path.clone(), sha256).await;
        assert_eq!(status, 422, "{path}: {message}");
        for secret in ["root", "secret", &passwd_digest] {
            assert!(
                !message.contains(secret),
                "{path} quotes {secret}: {message}"
            );
        }
        let real = hex::encode(Sha256::digest(
            std::fs::read(plugins.path().join("history.wasm")).unwrap(),
        ));
        assert!(
            !message.contains(&real),
            "{path}: the file's digest: {message}"
        );
    }
    // The component inside the folder loads.
    let (status, message) = put("history.wasm".into(), None).await;
    assert_eq!(status, 201, "{message}");
    // The SQLite database was not touched: the host still writes.
    let id = app.campaign(spec(3)).await;
    assert_eq!(app.request(&id, "alice").await.0, 202);
    app.wait_issued(&id, 1, 20).await;

    // A campaign file that links out of the folder is refused unread.
    let secret = outside.path().join("secret.toml");
    std::fs::write(
        &secret,
        "name = \"x\"\ncapacity = 1\nvalue = 1\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let link_id = unique("linked");
    let campaigns = app.platform.config().campaigns_dir();
    std::os::unix::fs::symlink(&secret, campaigns.join(format!("{link_id}.toml"))).unwrap();
    // A file inside the folder with a secret in a wrong field: refused without quoting it.
    let wrong_id = unique("wrong");
    std::fs::write(
        campaigns.join(format!("{wrong_id}.toml")),
        "name = \"x\"\ncapacity = \"hunter2\"\nvalue = 1\n",
    )
    .unwrap();
    wait_for(20, || async {
        let (_, files) = app.admin_get("/api/v1/admin/campaigns").await;
        let rejected = &files["rejected"];
        rejected.get(&link_id).is_some() && rejected.get(&wrong_id).is_some()
    })
    .await
    .expect("both files refused");
    let rejected = app.admin_get("/api/v1/admin/campaigns").await.1["rejected"].clone();
    let text = rejected.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("password"),
        "{text}"
    );
    assert!(
        rejected[&link_id]
            .as_str()
            .unwrap()
            .contains("outside the campaign folder")
    );
    assert!(
        rejected[&wrong_id].as_str().unwrap().contains("line 2"),
        "{text}"
    );
    app.stop().await;
}

/// What ships for users: the compose file has no default admin token and publishes no
/// backend's port, its admin plane only on loopback; the image runs as a user of its own.
#[test]
fn the_shipped_deployment_is_safe_by_default() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    assert!(!compose.contains("change-me"), "a default admin token");
    assert!(compose.contains("FIRSTCOME_ADMIN_TOKEN: ${FIRSTCOME_ADMIN_TOKEN:-}"));
    for backend in ["6379:", "3306:", "9092:", "9093:"] {
        assert!(
            !compose.contains(&format!("\"{backend}")),
            "{backend} published"
        );
    }
    assert!(compose.contains("\"127.0.0.1:8081:8081\""));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("\nUSER firstcome\n"),
        "the image runs as root"
    );
}

/// Dead letters through the admin API: listed without their payload, replayed and discarded
/// by an operator (not a viewer), settled once, each action in the audit log under the
/// credential's name; a wrong selection changes nothing.
async fn dead_letters_are_listed_replayed_and_discarded_by_operators(backend: Backend) {
    let app = host(backend, false).await;
    let failing = with_plugin(
        spec(5),
        "worker",
        &wasm("misbehave"),
        &[],
        &[("mode", "permanent")],
    );
    let id = app.campaign(failing).await;
    assert_eq!(app.request(&id, "ann").await.0, 202);
    let url = |path: &str| format!("{}/api/v1/admin/dead-letters{path}", app.admin_address);
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let open = || async {
        let (status, _, body) = call(&app, get.clone(), url(""), Some(VIEWER), None).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    wait_for(30, || async { open().await["total"] == 1 })
        .await
        .expect("the event is dead-lettered");
    let listed = open().await;
    let letter = &listed["letters"][0];
    assert_eq!(letter["consumer_group"], "worker");
    assert_eq!(letter["campaign_id"], id.as_str());
    assert_eq!(letter["attempts"], 1, "a permanent error is not retried");
    // The mail server's refusal quotes the shopper's address: a viewer does not see it, an
    // operator (who acts on the letter) does.
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("refuses") && error.contains("<[address]>: no such user"),
        "{letter}"
    );
    assert!(
        !error.contains('@'),
        "an address shown to a viewer: {error}"
    );
    let (status, _, as_operator) = call(&app, get.clone(), url(""), Some(OPERATOR), None).await;
    assert_eq!(status, 200);
    assert!(
        as_operator["letters"][0]["error"]
            .as_str()
            .unwrap()
            .contains("<shopper@example.com>"),
        "{as_operator}"
    );
    assert!(letter["settled"].is_null());
    assert!(
        letter.get("payload").is_none(),
        "no personal data: {letter}"
    );
    let event_id = letter["event_id"].as_str().unwrap().to_owned();

    // A viewer reads, an operator acts; a wrong selection changes nothing.
    let ids = json!({ "event_ids": [event_id] });
    let (status, _, _) = call(
        &app,
        post.clone(),
        url("/replay"),
        Some(VIEWER),
        Some(ids.clone()),
    )
    .await;
    assert_eq!(status, 403);
    for (body, status, code) in [
        (json!({}), 422, "invalid_body"),
        (
            json!({ "all": true, "event_ids": ["x"] }),
            422,
            "invalid_body",
        ),
        (
            json!({ "event_ids": ["nope", event_id] }),
            404,
            "unknown_dead_letter",
        ),
        (
            json!({ "event_ids": ["x"], "extra": 1 }),
            422,
            "invalid_body",
        ),
    ] {
        let (got, _, answer) = call(
            &app,
            post.clone(),
            url("/replay"),
            Some(OPERATOR),
            Some(body),
        )
        .await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
    }
    assert_eq!(open().await["total"], 1, "nothing replayed");

    let (status, _, done) = call(
        &app,
        post.clone(),
        url("/replay"),
        Some(OPERATOR),
        Some(ids.clone()),
    )
    .await;
    assert_eq!((status, done["count"].as_u64()), (200, Some(1)), "{done}");
    // The plugin fails it again: a new open letter, the first settled as replayed by otto.
    wait_for(30, || async {
        open().await["total"] == 1 && open().await["letters"][0]["offset"] != letter["offset"]
    })
    .await
    .expect("the replay fails again into a new dead letter");
    let (_, _, settled) = call(&app, get.clone(), url("?show=settled"), Some(VIEWER), None).await;
    assert_eq!(settled["total"], 1, "{settled}");
    assert_eq!(settled["letters"][0]["settled"]["outcome"], "replayed");
    assert_eq!(settled["letters"][0]["settled"]["actor"], "otto");

    let all = json!({ "all": true });
    let (status, _, done) = call(
        &app,
        post.clone(),
        url("/discard"),
        Some(OPERATOR),
        Some(all.clone()),
    )
    .await;
    assert_eq!((status, done["count"].as_u64()), (200, Some(1)), "{done}");
    assert_eq!(open().await["total"], 0);
    let (status, _, answer) = call(
        &app,
        post.clone(),
        url("/discard"),
        Some(OPERATOR),
        Some(ids),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("dead_letter_settled")),
        "{answer}"
    );
    let (status, _, answer) = call(
        &app,
        post.clone(),
        url("/discard"),
        Some(OPERATOR),
        Some(all),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_dead_letter")),
        "{answer}"
    );
    let (_, _, every) = call(
        &app,
        get.clone(),
        url("?show=all&limit=1"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(
        (
            every["total"].as_u64(),
            every["letters"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );

    let (_, _, audit) = call(
        &app,
        get,
        format!("{}/api/v1/admin/audit?actor=otto", app.admin_address),
        Some(VIEWER),
        None,
    )
    .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["dead_letter.discard", "dead_letter.replay"],
        "{audit}"
    );
    app.stop().await;
}

on_all_backends!(
    dead_letter_api,
    dead_letters_are_listed_replayed_and_discarded_by_operators
);
