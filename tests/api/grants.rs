//! Plugins held to their grants: personal data only where a grant needs it, email only to the
//! event's shopper and the campaign's listed recipients within a per-event quota, reads
//! charged like writes, and text from a plugin escaped before it reaches a log or a dead
//! letter.

use std::sync::Arc;

use serde_json::Value;

use firstcome_store::Scope;

use crate::helpers::{
    Backend, Backends, recipient, spawn_app_on, spec, wait_for, wasm, with_plugin,
};
use crate::plugins::user;

/// A campaign whose `role` runs the misbehave plugin in `mode` with `grants`.
fn misbehave(
    spec: firstcome_core::campaign::CampaignSpec,
    role: &str,
    grants: &[&str],
    settings: &[(&str, &str)],
) -> firstcome_core::campaign::CampaignSpec {
    with_plugin(spec, role, &wasm("misbehave"), grants, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_reaches_only_the_roles_granted_it() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    app.backends
        .store
        .upsert_users(&[user("ann", Some("ann@shop.test"), Some("ann-device"))])
        .await
        .unwrap();
    let peek = [("mode", "peek")];
    let mut campaign = spec(5);
    for (role, grants) in [
        ("plain", &["kv"][..]),
        ("counting", &["kv", "stats"][..]),
        ("mailing", &["kv", "email"][..]),
        ("pushing", &["kv", "push"][..]),
    ] {
        campaign = misbehave(campaign, role, grants, &peek);
    }
    let id = app.campaign(campaign).await;
    assert_eq!(app.request(&id, "ann").await.0, 202);
    let store = app.backends.store.clone();
    let seen = |role: &str, key: &str| {
        let (store, scope, key) = (
            store.clone(),
            Scope {
                campaign_id: id.clone(),
                role: role.into(),
            },
            key.to_owned(),
        );
        async move {
            store
                .kv_get(&scope, &key)
                .await
                .unwrap()
                .map(|v| String::from_utf8(v).unwrap())
        }
    };
    wait_for(30, || async {
        for role in ["plain", "counting", "mailing", "pushing"] {
            if seen(role, "email").await.is_none() {
                return false;
            }
        }
        true
    })
    .await
    .expect("every role handled the event");
    // role → (email, push token, gender)
    for (role, expected) in [
        ("plain", ["none", "none", "none"]),
        ("counting", ["none", "none", "female"]),
        ("mailing", ["ann@shop.test", "none", "female"]),
        ("pushing", ["none", "ann-device", "female"]),
    ] {
        let got = [
            seen(role, "email").await.unwrap(),
            seen(role, "fcm-token").await.unwrap(),
            seen(role, "gender").await.unwrap(),
        ];
        assert_eq!(got, expected, "{role}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_only_to_the_shopper_and_listed_recipients_within_a_quota() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let mail = dir.path().join("mail");
    let app = spawn_app_on(backends, dir, |c| c.plugins.max_sends_per_event = 2).await;
    app.backends
        .store
        .upsert_users(&[
            user("ann", Some("ann@shop.test"), None),
            user("bo", Some("bo@shop.test"), None),
        ])
        .await
        .unwrap();
    // 200 strangers, the listed desk, then the shopper: the strangers are refused, the desk
    // and the shopper get theirs.
    let mut campaign = misbehave(
        spec(5),
        "mailer",
        &["kv", "email"],
        &[
            ("mode", "spam"),
            ("count", "200"),
            ("also", "desk@shop.test"),
        ],
    );
    recipient(&mut campaign, "mailer", "desk@shop.test");
    let id = app.campaign(campaign).await;
    assert_eq!(app.request(&id, "ann").await.0, 202);
    let scope = Scope {
        campaign_id: id.clone(),
        role: "mailer".into(),
    };
    let store = app.backends.store.clone();
    wait_for(30, || async {
        store.kv_counter(&scope, "refused").await.unwrap() >= 200
    })
    .await
    .expect("the event handled");
    assert_eq!(store.kv_counter(&scope, "sent").await.unwrap(), 2);
    assert_eq!(store.kv_counter(&scope, "refused").await.unwrap(), 200);
    assert_eq!(
        store
            .kv_counter(&scope, "sent:desk@shop.test")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .kv_counter(&scope, "sent:ann@shop.test")
            .await
            .unwrap(),
        1
    );
    let files = std::fs::read_dir(&mail).map_or(0, |d| d.count());
    assert_eq!(files, 2, "two emails written to the mail folder");

    // The quota: three allowed recipients, two sends.
    let mut campaign = misbehave(
        spec(5),
        "mailer",
        &["kv", "email"],
        &[
            ("mode", "spam"),
            ("count", "0"),
            ("also", "desk@shop.test,desk2@shop.test"),
        ],
    );
    recipient(&mut campaign, "mailer", "desk@shop.test");
    recipient(&mut campaign, "mailer", "desk2@shop.test");
    let quota = app.campaign(campaign).await;
    assert_eq!(app.request(&quota, "bo").await.0, 202);
    let scope = Scope {
        campaign_id: quota.clone(),
        role: "mailer".into(),
    };
    wait_for(30, || async {
        store.kv_counter(&scope, "sent").await.unwrap()
            + store.kv_counter(&scope, "refused").await.unwrap()
            >= 3
    })
    .await
    .expect("the event handled");
    assert_eq!(store.kv_counter(&scope, "sent").await.unwrap(), 2);
    assert_eq!(store.kv_counter(&scope, "refused").await.unwrap(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_charged_and_plugin_text_is_escaped() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| c.consumers.max_retries = 0).await;
    let mut reads = misbehave(spec(1), "reader", &["kv"], &[("mode", "reads")]);
    reads.plugins.get_mut("reader").unwrap().timeout_ms = Some(60_000);
    let reader = app.campaign(reads).await;
    let forger = app
        .campaign(misbehave(spec(1), "forger", &["kv"], &[("mode", "forge")]))
        .await;
    assert_eq!(app.request(&reader, "ann").await.0, 202);
    assert_eq!(app.request(&forger, "bo").await.0, 202);
    let bus = app.platform.bus().clone();
    wait_for(60, || async {
        bus.fetch("coupon-issued.DLT", 100).await.unwrap().len() >= 2
    })
    .await
    .expect("both events dead-lettered");
    for letter in bus.fetch("coupon-issued.DLT", 100).await.unwrap() {
        let envelope: Value = serde_json::from_str(&letter.message.payload).unwrap();
        let error = &letter.message.headers["dlt.error"];
        if envelope["campaign_id"] == reader.as_str() {
            // A million reads in one call ran out of the call's budget long before its timeout.
            assert!(error.contains("output limit exceeded"), "{error}");
        } else {
            assert!(
                !error.contains('\n') && !error.contains('\u{1b}') && !error.contains('\u{7}'),
                "{error:?}"
            );
            assert!(
                error.contains("\\u{a}") && error.contains("\\u{1b}"),
                "{error}"
            );
        }
    }
    // The CLI prints the dead letters' errors escaped as well.
    let data = app.platform.config().data_dir.display().to_string();
    let (code, out, err) =
        crate::helpers::firstcome_run(&["dlt", "list"], &[("FIRSTCOME_DATA_DIR", &data)]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}') && out.contains("\\u{1b}"), "{out}");
    app.stop().await;
}

/// Six campaigns whose plugins each hold 20 MiB and ask to be kept for 100 events, under a
/// budget of 64 MiB: every event is handled, the account never passes the budget, at most one
/// instance is kept; a plugin that alone needs more than the budget fails its events (and
/// dead-letters them) instead of growing the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_wide_budget_bounds_plugin_memory() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.plugins.memory_budget_mb = 64;
        c.consumers.max_retries = 1;
    })
    .await;
    let holder = |mb: &str| {
        let mut s = misbehave(spec(5), "holder", &["kv"], &[("mode", "touch"), ("mb", mb)]);
        let plugin = s.plugins.get_mut("holder").unwrap();
        plugin.reuse = Some(100);
        plugin.memory_mb = Some(256);
        s
    };
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(app.campaign(holder("20")).await);
    }
    let greedy = app.campaign(holder("100")).await;
    for id in ids.iter().chain([&greedy]) {
        for user in ["ann", "bo"] {
            assert_eq!(app.request(id, user).await.0, 202);
        }
    }
    let store = app.backends.store.clone();
    let touched = |id: &String| {
        let scope = Scope {
            campaign_id: id.clone(),
            role: "holder".into(),
        };
        let store = store.clone();
        async move { store.kv_counter(&scope, "touched").await.unwrap() }
    };
    let most_used = std::cell::Cell::new(0.0f64);
    let most_kept = std::cell::Cell::new(0u64);
    let done = wait_for(90, || async {
        let used = app.metric("firstcome_plugin_memory_bytes").await;
        most_used.set(most_used.get().max(used));
        let (_, plugins) = app.admin_get("/api/v1/admin/plugins").await;
        let kept: u64 = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["warm_instances"].as_u64().unwrap_or_default())
            .sum();
        most_kept.set(most_kept.get().max(kept));
        for id in &ids {
            if touched(id).await < 2 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(done.is_some(), "every event of the six campaigns handled");
    let (most_used, most_kept) = (most_used.get(), most_kept.get());
    assert!(
        most_used <= (64 << 20) as f64,
        "the account passed the budget: {most_used}"
    );
    assert!(most_used > 0.0, "the account is kept");
    assert!(most_kept <= 1, "{most_kept} instances kept");
    let bus = app.platform.bus().clone();
    wait_for(60, || async {
        bus.fetch("coupon-issued.DLT", 100).await.unwrap().len() >= 2
    })
    .await
    .expect("the greedy plugin's events dead-lettered");
    for letter in bus.fetch("coupon-issued.DLT", 100).await.unwrap() {
        let envelope: Value = serde_json::from_str(&letter.message.payload).unwrap();
        assert_eq!(envelope["campaign_id"], greedy.as_str());
        let error = &letter.message.headers["dlt.error"];
        assert!(error.contains("memory budget"), "{error}");
    }
    assert_eq!(touched(&greedy).await, 0);
    app.stop().await;
}
