//! Campaign files and the admin API: applied live, invalid versions refused with a reason
//! while the previous one stays, removal stops the campaign. Also the user-facing routes
//! that show what was issued.

use std::time::Duration;

use serde_json::json;

use firstcome_core::campaign::{Campaign, CampaignSpec};

use crate::helpers::{ADMIN_TOKEN, Backend, spawn_app, wait_for};
use crate::on_all_backends;

fn cli() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_files_apply_live() {
    let app = spawn_app(Backend::Embedded).await;
    let dir = app.platform.config().campaigns_dir();
    let file = dir.join("live.toml");
    let view = |app: &crate::helpers::TestApp| {
        let url = app.url("/api/v1/campaigns/live");
        let client = app.client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    std::fs::write(&file, "name = \"Live\"\ncapacity = 2\nvalue = 100\n").unwrap();
    wait_for(5, || async { view(&app).await.0 == 200 })
        .await
        .expect("the new file applies");
    assert_eq!(view(&app).await.1["capacity"], 2);

    for u in ["a", "b"] {
        assert_eq!(app.request("live", u).await.0, 202);
    }
    app.wait_issued("live", 2, 10).await;
    // A bigger campaign: applies without a restart; the issued count stays.
    std::fs::write(&file, "name = \"Live\"\ncapacity = 3\nvalue = 100\n").unwrap();
    wait_for(5, || async { view(&app).await.1["capacity"] == 3 })
        .await
        .expect("the change applies");
    assert_eq!(view(&app).await.1["issued"], 2);
    assert_eq!(app.request("live", "c").await.0, 202);

    // Broken versions are refused with a reason; capacity 3 stays in force.
    let admin = || {
        app.client
            .get(app.url("/api/v1/admin/campaigns"))
            .bearer_auth(ADMIN_TOKEN)
    };
    for (text, reason) in [
        ("name = \"Live\"\ncapacity = \n", "live.toml"),
        (
            "name = \"Live\"\ncapacity = 1\nvalue = 100\n",
            "below the 3 requests already admitted",
        ),
    ] {
        app.wait_issued("live", 3, 10).await;
        std::fs::write(&file, text).unwrap();
        let shown = wait_for(5, || async {
            let r: serde_json::Value = admin().send().await.unwrap().json().await.unwrap();
            r["rejected"]["live"]
                .as_str()
                .is_some_and(|m| m.contains(reason))
        })
        .await;
        assert!(shown.is_some(), "rejection with {reason:?} shown");
        assert_eq!(
            view(&app).await.1["capacity"],
            3,
            "the previous version stays"
        );
    }
    // Removing the file stops the campaign.
    std::fs::remove_file(&file).unwrap();
    wait_for(5, || async { view(&app).await.0 == 404 })
        .await
        .expect("removal applies");
    let (_, coupons) = app.get("/api/v1/users/a/coupons").await;
    assert_eq!(
        coupons["coupons"][0]["campaign_id"], "live",
        "coupons outlive the campaign"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_writes_campaign_files_and_profiles() {
    let app = spawn_app(Backend::Embedded).await;
    let dir = app.platform.config().campaigns_dir();
    let doc = json!({"name": "Admin made", "capacity": 10, "value": 2500,
                     "coupon_expires_at": "2031-01-01T00:00:00Z", "chunk_size": 5});
    let r = app
        .client
        .put(app.url("/api/v1/admin/campaigns/made"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["capacity"].as_i64(), body["chunk_size"].as_i64()),
        (Some(10), Some(5))
    );
    let written = std::fs::read_to_string(dir.join("made.toml")).unwrap();
    assert!(written.contains("capacity = 10"), "{written}");
    assert!(
        std::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
            .args(["campaign", "validate"])
            .arg(dir.join("made.toml"))
            .status()
            .unwrap()
            .success()
    );

    let profile = json!({"email": "kim@example.com", "fcm_token": "tok", "gender": "female", "age_group": "30s"});
    let r = app
        .client
        .put(app.url("/api/v1/admin/users/kim"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&profile)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let bulk =
        json!({"users": [{"user_id": "lee", "email": "lee@example.com"}, {"user_id": "park"}]});
    let r = app
        .client
        .put(app.url("/api/v1/admin/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&bulk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["upserted"], 2);

    // The profile travels with the coupon's event.
    assert_eq!(app.request("made", "kim").await.0, 202);
    app.wait_issued("made", 1, 10).await;
    let (_, status) = app.get("/api/v1/campaigns/made/requests/kim").await;
    assert_eq!(status["status"], "issued");
    assert_eq!(status["coupon"]["value"], 2500);
    assert_eq!(status["coupon"]["expires_at"], "2031-01-01T00:00:00.000Z");
    // The event is published just after the commit.
    let store = &app.backends.store;
    crate::helpers::wait_for(10, || async {
        !store
            .read_log("coupon-issued", 1, 10)
            .await
            .unwrap()
            .is_empty()
    })
    .await
    .expect("the event is on the log");
    let log = store.read_log("coupon-issued", 1, 10).await.unwrap();
    let event: serde_json::Value = serde_json::from_str(&log[0].message.payload).unwrap();
    assert_eq!(event["payload"]["email"], "kim@example.com");
    assert_eq!(event["payload"]["age_group"], "30s");
    let (_, legacy) = app.get("/api/v1/coupons/my?userId=kim").await;
    assert_eq!(legacy["coupons"][0]["code"], status["coupon"]["code"]);
    let (_, none) = app.get("/api/v1/campaigns/made/requests/nobody").await;
    assert_eq!(none["status"], "none");

    let r = app
        .client
        .delete(app.url("/api/v1/admin/campaigns/made"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(!dir.join("made.toml").exists());
    assert_eq!(app.get("/api/v1/campaigns/made").await.0, 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get("/api/v1/campaigns/made").await.0,
        404,
        "the watcher agrees"
    );
    app.stop().await;
}

#[test]
fn cli_validate_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "name = \"Good\"\ncapacity = 5\nvalue = 1\n").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"Bad\"\ncapacity = 5\nvalue = 1\nchunk_size = 0\n",
    )
    .unwrap();
    let bad_id = dir.path().join("Bad Id.toml");
    std::fs::write(&bad_id, "name = \"x\"\ncapacity = 5\nvalue = 1\n").unwrap();

    let ok = cli()
        .args(["campaign", "validate"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok"));
    let out = cli()
        .args(["campaign", "validate"])
        .args([&good, &bad, &bad_id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: chunk_size: must be between 1 and 1000"),
        "{err}"
    );
    assert!(err.contains("invalid campaign id \"Bad Id\""), "{err}");
    let missing = cli()
        .args(["campaign", "validate", "/no/such.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// Concurrent changes of one campaign, through the admin API of one host and straight into
/// the database as several hosts applying the same file at start-up do, all succeed (a
/// database that breaks a deadlock between them is answered by running the change again),
/// and afterwards what runs, the database row and the file agree.
async fn concurrent_changes_of_one_campaign(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = crate::helpers::unique("c");
    let put = |i: i64| {
        app.client
            .put(app.url(&format!("/api/v1/admin/campaigns/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": format!("v{i}"), "capacity": 100 + i, "value": 1}))
            .send()
    };
    let answers = futures::future::join_all((0..16).map(put)).await;
    for r in answers {
        let r = r.unwrap();
        let status = r.status().as_u16();
        assert!(
            status == 200 || status == 201,
            "{status}: {}",
            r.text().await.unwrap()
        );
    }
    let running = app.platform.campaign(&id).expect("the campaign runs");
    let store = &app.backends.store;
    let row = store.campaign_row(&id).await.unwrap().unwrap();
    assert_eq!(
        (row.name.as_str(), row.capacity),
        (running.name(), running.capacity())
    );
    let file = app
        .platform
        .config()
        .campaigns_dir()
        .join(format!("{id}.toml"));
    let written = CampaignSpec::from_toml(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(
        (written.name.as_str(), written.capacity),
        (running.name(), running.capacity())
    );

    // Other hosts: their own connections to the same database, applying at once.
    let other = firstcome_store::Store::open(&app.backends.database_url)
        .await
        .unwrap();
    let changes = (0..16).map(|i| {
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let campaign = Campaign::new(&id, crate::helpers::spec(200 + i)).unwrap();
        async move { store.upsert_campaign(&campaign).await }
    });
    for result in futures::future::join_all(changes).await {
        result.expect("a concurrent change applies");
    }
    other.close().await;
    app.stop().await;
}

on_all_backends!(concurrent_changes, concurrent_changes_of_one_campaign);
