//! A plugin slow to `init` (or one whose `init` never ends) holds up only its own campaign:
//! other campaign files apply and admin changes answer while it loads, and a restarted host
//! serves at once, its versions in force admitting while their plugins load in the
//! background (their events wait for them, and are handled once they are in).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use firstcome_core::campaign::CampaignSpec;
use firstcome_store::Scope;

use crate::helpers::{ADMIN_TOKEN, Backend, Backends, TestApp, spawn_app_on, spec, wait_for, wasm};

/// A campaign whose `worker` plugin (misbehave, counting `seen`) works `init_ms` in `init`
/// on every instance, within a call limit of `timeout_ms`.
fn worker(init_ms: u64, timeout_ms: u64) -> CampaignSpec {
    let mut campaign = crate::helpers::with_plugin(
        spec(10),
        "worker",
        &wasm("misbehave"),
        &["kv"],
        &[
            ("mode", "slow"),
            ("ms", "0"),
            ("init_ms", &init_ms.to_string()),
        ],
    );
    campaign.plugins.get_mut("worker").unwrap().timeout_ms = Some(timeout_ms);
    campaign
}

async fn seen(app: &TestApp, campaign: &str) -> i64 {
    let scope = Scope {
        campaign_id: campaign.to_owned(),
        role: "worker".into(),
    };
    app.backends.store.kv_counter(&scope, "seen").await.unwrap()
}

/// `GET /api/v1/admin/campaigns`.
async fn folder(app: &TestApp) -> Value {
    app.admin_get("/api/v1/admin/campaigns").await.1
}

fn listed(folder: &Value, list: &str, id: &str) -> bool {
    folder[list]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i == id))
}

async fn status(app: &TestApp, campaign: &str) -> u16 {
    app.get(&format!("/api/v1/campaigns/{campaign}")).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_holds_up_only_its_own_campaign_running_and_at_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;
    let files = app.platform.config().campaigns_dir();

    // Three files at once: `slow` takes 5 s in `init`, `stuck` never ends its `init` (cut
    // off after 3 s: refused), `quick` loads at once.
    let texts = [
        ("slow", worker(5_000, 20_000)),
        ("stuck", worker(600_000, 3_000)),
        ("quick", worker(0, 20_000)),
    ]
    .map(|(id, campaign)| (id, campaign.to_toml()));
    let started = Instant::now();
    for (id, text) in texts {
        std::fs::write(files.join(format!("{id}.toml")), text).unwrap();
    }
    wait_for(10, || async { status(&app, "quick").await == 200 })
        .await
        .expect("the quick campaign's file applies");
    let quick_took = started.elapsed();
    let now = folder(&app).await;
    assert!(
        listed(&now, "applying", "slow") && listed(&now, "applying", "stuck"),
        "the slow files are still being applied: {now}"
    );
    assert_eq!(
        status(&app, "slow").await,
        404,
        "not applied before its init ends"
    );

    // An admin change of another campaign answers meanwhile.
    let put_started = Instant::now();
    let put = app
        .client
        .put(format!(
            "{}/api/v1/admin/campaigns/other",
            app.admin_address
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&spec(5))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let put_took = put_started.elapsed();
    assert!(
        listed(&folder(&app).await, "applying", "slow"),
        "the admin change did not wait for the slow file"
    );
    assert!(
        quick_took < Duration::from_secs(3) && put_took < Duration::from_secs(2),
        "another campaign waited on the slow one: its file applied after {quick_took:?}, \
         an admin change answered after {put_took:?}"
    );

    wait_for(30, || async { status(&app, "slow").await == 200 })
        .await
        .expect("the slow campaign applies once its init ends");
    let refused = wait_for(30, || async {
        folder(&app).await["rejected"]["stuck"]
            .as_str()
            .is_some_and(|r| r.contains("did not finish within"))
    })
    .await;
    assert!(
        refused.is_some(),
        "the stuck file is refused: {}",
        folder(&app).await
    );
    for campaign in ["slow", "quick"] {
        assert_eq!(app.request(campaign, "before").await.0, 202);
    }
    for campaign in ["slow", "quick"] {
        wait_for(60, || async { seen(&app, campaign).await == 1 })
            .await
            .unwrap_or_else(|| panic!("{campaign}'s event handled"));
    }
    app.stop().await;

    // A restart: the host serves within the start-up's settle wait, although `stuck` is
    // tried again and `slow`'s plugin takes 5 s to load.
    let restarted = Instant::now();
    let app = spawn_app_on(backends.reopen().await, dir.clone(), |_| {}).await;
    let build_took = restarted.elapsed();
    let now = folder(&app).await;
    assert!(
        listed(&now, "active", "slow"),
        "the version in force runs at once: {now}"
    );
    assert!(
        listed(&now, "loading", "slow"),
        "its plugins load in the background: {now}"
    );
    assert_eq!(
        app.request("slow", "after").await.0,
        202,
        "it admits meanwhile"
    );
    assert_eq!(app.request("quick", "after").await.0, 202);
    wait_for(20, || async { seen(&app, "quick").await == 2 })
        .await
        .expect("quick's event handled");
    let quick_after = restarted.elapsed();
    assert_eq!(
        seen(&app, "slow").await,
        1,
        "quick's event was handled while slow's plugins were still loading"
    );
    wait_for(60, || async { seen(&app, "slow").await == 2 })
        .await
        .expect("slow's event waited for its plugins and was handled, not skipped");
    let now = folder(&app).await;
    assert!(!listed(&now, "loading", "slow"), "loaded: {now}");
    assert!(
        build_took < Duration::from_secs(3),
        "the restarted host waited {build_took:?} for plugins before serving"
    );
    eprintln!(
        "quick file applied after {quick_took:?}, admin PUT {put_took:?}; restart served after \
         {build_took:?}, quick's event handled {quick_after:?} after it"
    );
    app.stop().await;
}
