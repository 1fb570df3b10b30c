//! Bad input of every kind: the right 4xx with `{code, message}`, and nothing written.

use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, spawn_app, spec};
use crate::on_all_backends;

/// Sends a raw request; checks status and error code; returns the body.
async fn expect(app: &TestApp, req: reqwest::RequestBuilder, status: u16, code: &str) -> Value {
    let r = req.send().await.unwrap();
    let got = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (got, body["code"].as_str()),
        (status, Some(code)),
        "body: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {body}"
    );
    let _ = app;
    body
}

async fn rejects_bad_input_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(spec(5)).await;
    let c = &app.client;
    let post = |path: &str| c.post(app.url(path));
    let requests = format!("/api/v1/campaigns/{id}/requests");

    expect(
        &app,
        post(&requests)
            .header("content-type", "application/json")
            .body("{\"user_id\":"),
        400,
        "malformed_body",
    )
    .await;
    expect(
        &app,
        post(&requests).body("{\"user_id\":\"a\"}"),
        415,
        "unsupported_media_type",
    )
    .await;
    expect(&app, post(&requests).json(&json!({})), 422, "invalid_body").await;
    expect(
        &app,
        post(&requests).json(&json!({"user_id": 42})),
        422,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        post(&requests).json(&json!({"user_id": "a", "extra": 1})),
        422,
        "invalid_body",
    )
    .await;
    // JSON that is not an object: serde alone would read `["a"]` as `{"user_id": "a"}`.
    let body = expect(
        &app,
        post(&requests).json(&json!(["a"])),
        422,
        "invalid_body",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("object"),
        "{body}"
    );
    expect(
        &app,
        post(&requests).json(&json!(null)),
        422,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        post(&requests).json(&json!({"user_id": ""})),
        422,
        "invalid_user_id",
    )
    .await;
    expect(
        &app,
        post(&requests).json(&json!({"user_id": "x".repeat(129)})),
        422,
        "invalid_user_id",
    )
    .await;
    expect(
        &app,
        post(&requests).json(&json!({"user_id": "a\u{7}b"})),
        422,
        "invalid_user_id",
    )
    .await;
    expect(
        &app,
        post(&requests).json(&json!({"user_id": " padded"})),
        422,
        "invalid_user_id",
    )
    .await;
    // A key named twice: a gateway reading the first would see another shopper than we would
    // (serde_json keeps the last). Refused on every JSON route, at any depth.
    let raw = |req: reqwest::RequestBuilder, body: &'static str| {
        req.header("content-type", "application/json").body(body)
    };
    for body in [
        r#"{"user_id":"a","user_id":"b"}"#,
        r#"{"user_id":"a","user\u005fid":"b"}"#,
    ] {
        let refused = expect(&app, raw(post(&requests), body), 422, "invalid_body").await;
        assert!(
            refused["message"].as_str().unwrap().contains("twice"),
            "{refused}"
        );
    }
    expect(
        &app,
        raw(
            post("/api/v1/coupons/request"),
            r#"{"userId":1,"promotionId":7,"userId":2}"#,
        ),
        422,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        raw(
            c.put(app.url("/api/v1/admin/campaigns/new-one"))
                .bearer_auth(ADMIN_TOKEN),
            r#"{"name":"n","capacity":3,"value":1,"capacity":5}"#,
        ),
        422,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        post(&requests).json(&json!({"user_id": "x".repeat(20_000)})),
        413,
        "body_too_large",
    )
    .await;
    expect(
        &app,
        post("/api/v1/campaigns/no-such/requests").json(&json!({"user_id": "a"})),
        404,
        "unknown_campaign",
    )
    .await;
    expect(
        &app,
        post("/api/v1/campaigns/UPPER/requests").json(&json!({"user_id": "a"})),
        404,
        "unknown_campaign",
    )
    .await;
    expect(
        &app,
        c.get(app.url(&format!("/api/v1/campaigns/{id}/requests/%07"))),
        422,
        "invalid_user_id",
    )
    .await;
    expect(
        &app,
        c.get(app.url("/api/v1/campaigns/no-such/requests/a")),
        404,
        "unknown_campaign",
    )
    .await;
    expect(
        &app,
        c.get(app.url("/api/v1/campaigns/no-such")),
        404,
        "unknown_campaign",
    )
    .await;
    expect(
        &app,
        post("/api/v1/coupons/request").json(&json!({"userId": "a"})),
        422,
        "invalid_body",
    )
    .await;
    // Legacy id numbers: whole numbers up to 2^53 - 1, which JSON readers hold exactly.
    for promotion in [
        json!(-1),
        json!(1.5),
        json!(9_007_199_254_740_992_u64),
        json!(true),
    ] {
        expect(
            &app,
            post("/api/v1/coupons/request").json(&json!({"userId": 1, "promotionId": promotion})),
            422,
            "invalid_body",
        )
        .await;
    }
    expect(
        &app,
        post("/api/v1/coupons/request").json(&json!({"userId": 12.0, "promotionId": 7})),
        404,
        "unknown_campaign",
    )
    .await;
    expect(
        &app,
        c.get(app.url("/api/v1/coupons/my")),
        400,
        "invalid_query",
    )
    .await;
    expect(
        &app,
        c.get(app.url("/api/v1/coupons/my?userId=1&userId=2")),
        400,
        "invalid_query",
    )
    .await;
    expect(
        &app,
        c.get(app.url("/api/v1/nothing-here")),
        404,
        "not_found",
    )
    .await;
    expect(
        &app,
        c.delete(app.url(&requests)),
        405,
        "method_not_allowed",
    )
    .await;

    // Admin: no token, wrong token, then bad documents with the right token.
    let admin_put = |path: &str| c.put(app.url(path)).bearer_auth(ADMIN_TOKEN);
    let campaign_doc = json!({"name": "n", "capacity": 3, "value": 1});
    expect(
        &app,
        c.put(app.url("/api/v1/admin/campaigns/new-one"))
            .json(&campaign_doc),
        401,
        "unauthorized",
    )
    .await;
    expect(
        &app,
        c.put(app.url("/api/v1/admin/campaigns/new-one"))
            .bearer_auth("wrong")
            .json(&campaign_doc),
        401,
        "unauthorized",
    )
    .await;
    expect(
        &app,
        admin_put("/api/v1/admin/campaigns/Bad.Id").json(&campaign_doc),
        400,
        "invalid_campaign_id",
    )
    .await;
    expect(
        &app,
        admin_put("/api/v1/admin/campaigns/new-one")
            .json(&json!({"name": "n", "capacity": 0, "value": 1})),
        422,
        "invalid_campaign",
    )
    .await;
    expect(
        &app,
        admin_put("/api/v1/admin/campaigns/new-one")
            .json(&json!({"name": "n", "capacity": 1, "value": 1, "colour": "red"})),
        422,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        admin_put("/api/v1/admin/campaigns/new-one")
            .json(&json!({"name": "n", "capacity": 1, "value": 1, "opens_at": "soon"})),
        422,
        "invalid_body",
    )
    .await;
    // A plugin path that is no component: a device (it would block or fill the memory), and
    // a folder named like one.
    let body = expect(
        &app,
        admin_put("/api/v1/admin/campaigns/new-one").json(&json!({
            "name": "n", "capacity": 1, "value": 1,
            "plugins": {"history": {"path": "/dev/zero", "grants": ["history"]}}
        })),
        422,
        "invalid_plugin",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains(".wasm file"),
        "{body}"
    );
    let folder = tempfile::tempdir().unwrap();
    let named_like_one = folder.path().join("history.wasm");
    std::fs::create_dir(&named_like_one).unwrap();
    let body = expect(
        &app,
        admin_put("/api/v1/admin/campaigns/new-one").json(&json!({
            "name": "n", "capacity": 1, "value": 1,
            "plugins": {"history": {"path": named_like_one, "grants": ["history"]}}
        })),
        422,
        "invalid_plugin",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{body}"
    );
    expect(
        &app,
        admin_put("/api/v1/admin/users/u1").json(&json!([null, null])),
        422,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        admin_put("/api/v1/admin/users/u1").json(&json!({"email": "not-an-address"})),
        422,
        "invalid_user",
    )
    .await;
    expect(
        &app,
        admin_put("/api/v1/admin/users/u1").json(&json!({"gender": "robot"})),
        422,
        "invalid_user",
    )
    .await;
    expect(
        &app,
        admin_put("/api/v1/admin/users/u1").json(&json!({"age_group": "ancient"})),
        422,
        "invalid_user",
    )
    .await;
    let bulk = json!({"users": [{"user_id": "ok1", "email": "a@b.co"}, {"user_id": "", "email": "c@d.co"}]});
    let body = expect(
        &app,
        admin_put("/api/v1/admin/users").json(&bulk),
        422,
        "invalid_user",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("users[1]"),
        "{body}"
    );
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"user_id": format!("u{i}")}))
        .collect();
    expect(
        &app,
        admin_put("/api/v1/admin/users").json(&json!({"users": many})),
        422,
        "too_many_users",
    )
    .await;

    // Nothing of the above was written anywhere.
    let store = &app.backends.store;
    assert_eq!(
        store.count_users().await.unwrap(),
        0,
        "no user profile written"
    );
    assert_eq!(store.count_coupons(&id).await.unwrap(), 0);
    assert_eq!(
        app.backends.admission.counts(&id).await.unwrap().admitted,
        0,
        "nobody admitted"
    );
    assert!(
        store.campaign_row("new-one").await.unwrap().is_none(),
        "no campaign row"
    );
    assert!(
        !app.platform
            .config()
            .campaigns_dir()
            .join("new-one.toml")
            .exists(),
        "no file"
    );
    assert!(app.platform.campaign("new-one").is_none());
    app.stop().await;
}

on_all_backends!(rejections, rejects_bad_input_and_writes_nothing);

async fn refusals_by_campaign_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut later = spec(5);
    later.opens_at = Some("2099-01-01T00:00:00Z".parse().unwrap());
    let not_open = app.campaign(later).await;
    let mut over = spec(5);
    over.opens_at = Some("2020-01-01T00:00:00Z".parse().unwrap());
    over.closes_at = Some("2020-01-02T00:00:00Z".parse().unwrap());
    let closed = app.campaign(over).await;
    let tiny = app.campaign(spec(1)).await;

    let (status, body) = app.request(&not_open, "a").await;
    assert_eq!((status, body["code"].as_str()), (410, Some("not_open")));
    let (status, body) = app.request(&closed, "a").await;
    assert_eq!((status, body["code"].as_str()), (410, Some("closed")));
    assert_eq!(app.request(&tiny, "a").await.0, 202);
    let (status, body) = app.request(&tiny, "a").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("duplicate_request"))
    );
    let (status, body) = app.request(&tiny, "b").await;
    assert_eq!((status, body["code"].as_str()), (410, Some("sold_out")));
    let (_, view) = app.get(&format!("/api/v1/campaigns/{not_open}")).await;
    assert_eq!(view["status"], "not_open");
    let (_, view) = app.get(&format!("/api/v1/campaigns/{closed}")).await;
    assert_eq!(view["status"], "closed");
    app.stop().await;
}

on_all_backends!(campaign_state, refusals_by_campaign_state);
