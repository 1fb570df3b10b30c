//! `GET /metrics`: after a scripted run, the series say what happened.

use crate::helpers::{Backend, spawn_app, spec, storm, with_history};

/// The value of the first series named `name` whose labels include every pair in `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_happened() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app.campaign(with_history(spec(100))).await;
    let users: Vec<String> = (0..150).map(|i| format!("u{i}")).collect();
    let accepted = storm(&[&app], &id, users, false).await;
    assert_eq!(accepted.len(), 100);
    for user in accepted.keys().take(10) {
        assert_eq!(app.request(&id, user).await.0, 409, "a duplicate");
    }
    app.wait_issued(&id, 100, 20).await;
    let store = &app.backends.store;
    crate::helpers::wait_for(20, || async {
        store.history_of_campaign(&id).await.unwrap().len() == 100
    })
    .await
    .expect("history complete");
    // The group stores its position just after it commits a batch's writes: the lag reaches 0
    // a moment after the history is complete.
    crate::helpers::wait_for(20, || async {
        let r = app.client.get(app.url("/metrics")).send().await.unwrap();
        let text = r.text().await.unwrap();
        value(&text, "firstcome_consumer_lag", &[("group", "history")]) == Some(0.0)
    })
    .await
    .expect("the history group caught up");

    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let c = ("campaign", id.as_str());
    let admissions = |result| {
        value(
            &text,
            "firstcome_admissions_total",
            &[c, ("result", result)],
        )
    };
    // 150 distinct users for 100 coupons, then 10 of the winners again.
    assert_eq!(admissions("admitted"), Some(100.0), "{text}");
    assert_eq!(admissions("sold_out"), Some(50.0));
    assert_eq!(admissions("duplicate"), Some(10.0));
    assert_eq!(value(&text, "firstcome_issued", &[c]), Some(100.0));
    assert_eq!(value(&text, "firstcome_remaining", &[c]), Some(0.0));
    assert_eq!(value(&text, "firstcome_queue_depth", &[c]), Some(0.0));
    assert_eq!(
        value(&text, "firstcome_chunk_size_sum", &[c]),
        Some(100.0),
        "every request in a chunk"
    );
    assert!(value(&text, "firstcome_chunk_commit_seconds_count", &[c]).unwrap() >= 1.0);
    assert_eq!(
        value(
            &text,
            "firstcome_plugin_calls_total",
            &[c, ("role", "history")]
        ),
        Some(100.0),
        "one plugin call per coupon"
    );
    assert_eq!(
        value(
            &text,
            "firstcome_plugin_traps_total",
            &[c, ("role", "history")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "firstcome_consumer_lag", &[("group", "history")]),
        Some(0.0)
    );
    assert_eq!(value(&text, "firstcome_outbox_unpublished", &[]), Some(0.0));
    let route = ("route", "/api/v1/campaigns/{campaign_id}/requests");
    assert!(
        value(
            &text,
            "firstcome_http_request_duration_seconds_count",
            &[route, ("status", "202")]
        )
        .unwrap()
            >= 100.0,
        "request latency by route and status"
    );
    assert!(
        value(
            &text,
            "firstcome_events_handled_total",
            &[("group", "history")]
        )
        .unwrap()
            >= 100.0
    );
    app.stop().await;
}

/// Every response carries the request's id: the caller's, or a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_the_request_id() {
    let app = spawn_app(Backend::Embedded).await;
    let get = |id: Option<&'static str>| {
        let mut r = app.client.get(app.url("/api/v1/campaigns"));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.send()
    };
    let r = get(Some("checkout-42")).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "checkout-42");
    let r = get(None).await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let r = get(Some("has spaces")).await.unwrap();
    assert_ne!(
        r.headers()["x-request-id"],
        "has spaces",
        "an unusable id is replaced"
    );
    // Also answers no route gave: an unknown path, a wrong method, the API's Swagger UI.
    let unknown = app
        .client
        .get(app.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.headers().contains_key("x-request-id"));
    let wrong = app
        .client
        .delete(app.url("/api/v1/campaigns"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(wrong.headers().contains_key("x-request-id"));
    let docs = app.client.get(app.url("/api/docs/")).send().await.unwrap();
    assert!(docs.headers().contains_key("x-request-id"));
    // They are timed too, unknown paths under one `unmatched` route.
    let text = app.text("/metrics").await;
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    app.stop().await;
}

/// One request's journey in the logs: with `RUST_LOG=info,journey=debug` and JSON lines, the
/// admission's `request_id` finds its admission and the chunk that issued it, and the event id
/// that line names finds the publish and each consumer group's handling (the stats plugin's
/// call in the `event` span, the history group's), across the host's tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_finds_every_line_of_its_journey() {
    let dir = tempfile::tempdir().unwrap();
    let (data, campaigns) = (dir.path().join("data"), dir.path().join("campaigns"));
    std::fs::create_dir_all(&campaigns).unwrap();
    let stats = crate::helpers::wasm("stats");
    let history = crate::helpers::wasm("history");
    std::fs::write(
        campaigns.join("trail.toml"),
        format!(
            "name = \"Trail\"\ncapacity = 5\nvalue = 1\n\
             [plugins.stats]\npath = {stats:?}\ngrants = [\"stats\"]\n\
             [plugins.history]\npath = {history:?}\ngrants = [\"history\"]\n"
        ),
    )
    .unwrap();
    let port = crate::helpers::free_port();
    let log = dir.path().join("host.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
        .arg("serve")
        .env("FIRSTCOME_LISTEN", format!("127.0.0.1:{port}"))
        .env("FIRSTCOME_DATA_DIR", &data)
        .env("FIRSTCOME_CAMPAIGNS_DIR", &campaigns)
        .env("FIRSTCOME_PLUGINS__DIR", "/")
        .env("FIRSTCOME_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,journey=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::helpers::wait_ready(&client, &base, 60).await;
    crate::helpers::wait_for(20, || async {
        client
            .get(format!("{base}/api/v1/campaigns/trail"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
    .expect("the campaign applies");
    for user in ["ann", "bo"] {
        let r = client
            .post(format!("{base}/api/v1/campaigns/trail/requests"))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r: serde_json::Value = client
        .post(format!("{base}/api/v1/campaigns/trail/requests"))
        .json(&serde_json::json!({ "user_id": "cy" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request_id = r["request_id"].as_str().unwrap().to_owned();

    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // Every field of a line: its own and its spans'.
    let mentions = |line: &serde_json::Value, key: &str, value: &str| {
        let hit = |o: &serde_json::Value| o.get(key).and_then(|v| v.as_str()) == Some(value);
        hit(&line["fields"])
            || hit(&line["span"])
            || line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(hit))
    };
    let messages = |key: &str, value: &str| -> Vec<String> {
        lines()
            .iter()
            .filter(|l| mentions(l, key, value))
            .map(|l| {
                let group = l["span"]["group"].as_str().unwrap_or_default();
                let message = l["fields"]["message"].as_str().unwrap_or_default();
                format!(
                    "{message}{}",
                    if group.is_empty() {
                        String::new()
                    } else {
                        format!(" ({group})")
                    }
                )
            })
            .collect()
    };
    let done = crate::helpers::wait_for(30, || async {
        let by_request = messages("request_id", &request_id);
        by_request
            .iter()
            .any(|m| m.starts_with("handled by the plugin (stats)"))
            && by_request
                .iter()
                .any(|m| m.starts_with("handled by the plugin (history)"))
    })
    .await;
    let by_request = messages("request_id", &request_id);
    assert!(
        done.is_some(),
        "the journey did not reach both groups: {by_request:?}"
    );
    assert!(
        by_request.contains(&"admitted".to_owned()),
        "{by_request:?}"
    );
    let issued = lines()
        .into_iter()
        .find(|l| mentions(l, "request_id", &request_id) && l["fields"]["message"] == "issued")
        .unwrap_or_else(|| panic!("no `issued` line: {by_request:?}"));
    assert_eq!(issued["span"]["name"], "chunk", "{issued}");
    let event_id = issued["fields"]["event_id"].as_str().unwrap().to_owned();
    let by_event = messages("event_id", &event_id);
    for step in [
        "issued",
        "published",
        "handled by the plugin (stats)",
        "handled by the plugin (history)",
    ] {
        assert!(
            by_event.iter().any(|m| m == step),
            "{step:?} missing: {by_event:?}"
        );
    }
    // The other requests' lines are not this one's.
    assert!(
        by_request.iter().filter(|m| *m == "admitted").count() == 1,
        "{by_request:?}"
    );
    child.kill().await.unwrap();
}
