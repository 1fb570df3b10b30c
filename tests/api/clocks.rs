//! One clock for every host: a `firstcome serve` process whose clock runs ten minutes ahead
//! (libfaketime, from Debian) beside a host on the right time, both on one Redis and one
//! PostgreSQL. A campaign opening in five minutes is open on neither; readiness says how far
//! the host is off and from which clock. The host ahead takes the consumer group's lease
//! first, writing it on the shared clock; killed, its group is taken over by the other host
//! within the lease (not after the lease plus its ten minutes).

use std::sync::Arc;

use firstcome_core::clock::{host_now_ms, to_rfc3339};
use serde_json::Value;

use crate::helpers::{
    Backend, Backends, free_port, spawn_app_on, spec, unique, wait_for, wait_ready, with_history,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_whose_clock_runs_ahead_judges_windows_by_the_shared_clock() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::RedisPostgres, dir.path()).await;
    let campaigns = dir.path().join("ahead-campaigns");
    std::fs::create_dir_all(&campaigns).unwrap();
    let later = unique("later");
    let now = unique("now");
    let opens = to_rfc3339(host_now_ms() + 5 * 60_000);
    std::fs::write(
        campaigns.join(format!("{later}.toml")),
        format!("name = \"Later\"\ncapacity = 10\nvalue = 1\nopens_at = \"{opens}\"\n"),
    )
    .unwrap();
    std::fs::write(
        campaigns.join(format!("{now}.toml")),
        with_history(spec(10)).to_toml(),
    )
    .unwrap();

    // Host B, ten minutes ahead: libfaketime preloaded into the host itself (the `faketime`
    // wrapper would stay between the test and the host, which then outlives a kill).
    let libfaketime = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime is installed (tests/run.sh installs Debian's faketime)");
    let port = free_port();
    let ahead_host = tokio::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
        .arg("serve")
        .env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "+10m")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FIRSTCOME_LISTEN", format!("127.0.0.1:{port}"))
        .env("FIRSTCOME_DATA_DIR", dir.path().join("ahead"))
        .env("FIRSTCOME_CAMPAIGNS_DIR", &campaigns)
        .env("FIRSTCOME_PLUGINS__DIR", "/")
        .env("FIRSTCOME_DATABASE_URL", &backends.database_url)
        .env("FIRSTCOME_REDIS_URL", backends.redis_url.as_ref().unwrap())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn();
    let mut ahead_host = ahead_host.unwrap();
    let ahead = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_ready(&client, &ahead, 60).await;
    // B alone: its history group takes the lease, and writes it on the shared clock.
    let lease = || async {
        sqlx::query_as::<_, (Option<String>, Option<i64>)>(
            "SELECT owner, lease_until FROM consumer_offsets WHERE group_id = 'history'",
        )
        .fetch_optional(backends.store.pool())
        .await
        .unwrap()
    };
    wait_for(30, || async {
        lease().await.is_some_and(|(owner, _)| owner.is_some())
    })
    .await
    .expect("the host ahead takes the history group's lease");
    let (_, until) = lease().await.unwrap();
    let ahead_by = until.unwrap() - host_now_ms();
    assert!(
        ahead_by < 60_000,
        "the lease runs {ahead_by} ms from now: written on the host's own clock, ten minutes ahead"
    );

    // Host A, on the right time, in this process.
    let right = spawn_app_on(backends.reopen().await, dir.clone(), |c| {
        c.campaigns_dir = Some(campaigns.clone());
    })
    .await;

    let ask = |base: String, campaign: String, user: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("{base}/api/v1/campaigns/{campaign}/requests"))
                .json(&serde_json::json!({ "user_id": user }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body["code"].as_str().unwrap_or_default().to_owned())
        }
    };
    for (base, user) in [(ahead.clone(), "b1"), (right.address.clone(), "a1")] {
        assert_eq!(
            ask(base.clone(), later.clone(), user).await,
            (410, "not_open".to_owned()),
            "{base}: the campaign opens in five minutes"
        );
        let (status, _) = ask(base.clone(), now.clone(), user).await;
        assert_eq!(status, 202, "{base}: an open campaign admits");
    }

    // B's readiness says it is ten minutes ahead of Redis's clock.
    let ready: Value = client
        .get(format!("{ahead}/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["clock"]["source"], "redis", "{ready}");
    let skew = ready["clock"]["skew_ms"].as_i64().unwrap();
    assert!(
        (595_000..605_000).contains(&skew),
        "ten minutes ahead: {skew} ms"
    );
    let (_, here) = right.get("/health/ready").await;
    assert!(
        here["clock"]["skew_ms"].as_i64().unwrap().abs() < 1_000,
        "{here}"
    );

    // B is killed holding the lease: A takes the group within the lease and handles events.
    ahead_host.kill().await.unwrap();
    let killed = std::time::Instant::now();
    let (status, _) = ask(right.address.clone(), now.clone(), "a2").await;
    assert_eq!(status, 202);
    let handled = wait_for(45, || async {
        let history = right
            .backends
            .store
            .history_of_campaign(&now)
            .await
            .unwrap();
        history.iter().any(|h| h.user_id == "a2")
    })
    .await;
    assert!(
        handled.is_some(),
        "the other host took the group over after the killed host's lease (15 s): \
         a2's event unhandled after {:?}",
        killed.elapsed()
    );
    eprintln!(
        "group taken over {:?} after the host ahead was killed",
        killed.elapsed()
    );
    right.stop().await;
}
