//! A campaign removed while requests it answered `202` are still queued (its issuer held up
//! by a lock on its database row): it admits nobody from then on, and every request it
//! admitted is still issued, whether it was removed through the admin API, by deleting its
//! file, or before a host restarted. The removal answers at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, Executor};

use crate::helpers::{ADMIN_TOKEN, Backend, Backends, TestApp, spawn_app_on, unique, wait_for};
use crate::on_all_backends;

/// A transaction of another session holding the write lock on a campaign's row (SQLite: on
/// the whole file), so that no chunk can commit until it is dropped.
struct RowLock(sqlx::AnyConnection);

impl RowLock {
    async fn take(database_url: &str, campaign: &str) -> Self {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(database_url).await.unwrap();
        if database_url.starts_with("sqlite:") {
            conn.execute("BEGIN IMMEDIATE").await.unwrap();
        } else {
            let placeholder = if database_url.starts_with("postgres") {
                "$1"
            } else {
                "?"
            };
            conn.execute("BEGIN").await.unwrap();
            let lock = format!("SELECT id FROM campaigns WHERE id = {placeholder} FOR UPDATE");
            conn.execute(sqlx::query(&lock).bind(campaign.to_owned()))
                .await
                .unwrap();
        }
        Self(conn)
    }

    async fn release(mut self) {
        self.0.execute("ROLLBACK").await.unwrap();
        self.0.close().await.unwrap();
    }
}

async fn put_campaign(app: &TestApp, id: &str, capacity: i64) {
    let r = app
        .client
        .put(app.url(&format!("/api/v1/admin/campaigns/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "Removed", "capacity": capacity, "value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn status(app: &TestApp, id: &str, user: &str) -> (u16, Value) {
    app.get(&format!("/api/v1/campaigns/{id}/requests/{user}"))
        .await
}

async fn admin_list(app: &TestApp) -> Value {
    app.admin_get("/api/v1/admin/campaigns").await.1
}

/// Admits `n` shoppers while issuing is held up; returns them.
async fn admit_held(app: &TestApp, id: &str, n: usize) -> Vec<String> {
    let users: Vec<String> = (0..n).map(|i| format!("held-{i}")).collect();
    for user in &users {
        let (code, body) = app.request(id, user).await;
        assert_eq!(code, 202, "{body}");
    }
    users
}

/// Waits until every user holds a coupon of `id` and the removed campaign's drain ended.
async fn all_issued_and_drained(app: &TestApp, id: &str, users: &[String]) {
    app.wait_issued(id, users.len() as i64, 60).await;
    for user in users {
        let (code, body) = status(app, id, user).await;
        // Once drained the campaign is gone from the public routes; its coupons are not.
        assert!(
            code == 404 || body["status"] == "issued",
            "{user}: {code} {body}"
        );
    }
    let store = &app.backends.store;
    wait_for(30, || async {
        store
            .campaign_row(id)
            .await
            .unwrap()
            .is_some_and(|row| !row.active)
            && app.platform.draining(id).is_none()
    })
    .await
    .expect("the drained campaign is marked inactive");
    let issued = store.count_coupons(id).await.unwrap();
    assert_eq!(
        issued,
        users.len() as i64,
        "exactly the admitted were issued"
    );
}

async fn a_removed_campaign_issues_what_it_admitted(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;

    // Through the admin API.
    let by_api = unique("rm");
    put_campaign(&app, &by_api, 50).await;
    let lock = RowLock::take(&backends.database_url, &by_api).await;
    let users = admit_held(&app, &by_api, 20).await;
    let asked = Instant::now();
    let r = app
        .client
        .delete(app.url(&format!("/api/v1/admin/campaigns/{by_api}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the removal answers at once: {:?}",
        asked.elapsed()
    );
    // Nobody more is admitted; those admitted read as queued, and it is listed as draining.
    let (code, body) = app.request(&by_api, "late").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (410, Some("closed")),
        "{body}"
    );
    for user in &users {
        let (code, body) = status(&app, &by_api, user).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("queued")),
            "{body}"
        );
    }
    assert_eq!(admin_list(&app).await["draining"], json!([by_api]));
    lock.release().await;
    all_issued_and_drained(&app, &by_api, &users).await;
    let (code, _) = status(&app, &by_api, "late").await;
    assert_eq!(code, 404, "gone once drained");

    // By deleting its file.
    let by_file = unique("rm");
    put_campaign(&app, &by_file, 50).await;
    let lock = RowLock::take(&backends.database_url, &by_file).await;
    let users = admit_held(&app, &by_file, 10).await;
    // The watcher has seen the file (it scans every 100 ms here) before it goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let file = app
        .platform
        .config()
        .campaigns_dir()
        .join(format!("{by_file}.toml"));
    std::fs::remove_file(&file).unwrap();
    wait_for(10, || async { app.platform.campaign(&by_file).is_none() })
        .await
        .expect("the watcher removes the campaign");
    let (code, body) = app.request(&by_file, "late").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (410, Some("closed")),
        "{body}"
    );
    lock.release().await;
    all_issued_and_drained(&app, &by_file, &users).await;

    // Removed, then the host stops before its drain ended: the next start drains it.
    let across = unique("rm");
    put_campaign(&app, &across, 50).await;
    let lock = RowLock::take(&backends.database_url, &across).await;
    let users = admit_held(&app, &across, 10).await;
    let r = app
        .client
        .delete(app.url(&format!("/api/v1/admin/campaigns/{across}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the host stops with a chunk held up");
    lock.release().await;
    let again = spawn_app_on(backends.reopen().await, dir.clone(), |_| {}).await;
    all_issued_and_drained(&again, &across, &users).await;
    again.stop().await;
}

on_all_backends!(
    removed_mid_queue,
    a_removed_campaign_issues_what_it_admitted
);
