//! No input can wedge the host: a plugin's huge error, a counter that overflows, a campaign
//! whose numbers overflow, a campaign file read half-written or refused at start-up, clients
//! that send half a request and stop, and user ids that only look alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcome_core::campaign::CampaignSpec;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    ADMIN_TOKEN, Backend, Backends, TestApp, spawn_app_on, spec, unique, wait_for, wasm,
    with_plugin,
};

/// The dead letters of the embedded event log's topic.
async fn dead_letters(app: &TestApp) -> Vec<firstcome_bus::Delivered> {
    app.platform
        .bus()
        .fetch("coupon-issued.DLT", 100)
        .await
        .unwrap()
}

/// A plugin returns a 70 KB permanent error (on MariaDB the dead letter did not fit its column
/// and the group retried it for ever). The error is cut to 4 KiB with a marker, one dead letter
/// is written, and the next campaign's event behind it in the same group is handled: lag 0.
async fn a_huge_error_does_not_wedge_the_group(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    let misbehave = wasm("misbehave");
    let grants = ["history", "kv"];
    let huge = app
        .campaign(with_plugin(
            spec(1),
            "bad",
            &misbehave,
            &grants,
            &[("mode", "huge")],
        ))
        .await;
    let fine = app
        .campaign(with_plugin(
            spec(1),
            "bad",
            &misbehave,
            &grants,
            &[("mode", "ok")],
        ))
        .await;
    assert_eq!(app.request(&huge, "u1").await.0, 202);
    app.wait_issued(&huge, 1, 20).await;
    assert_eq!(app.request(&fine, "u2").await.0, 202);
    let store = &app.backends.store;
    wait_for(30, || async {
        store.history_of_campaign(&fine).await.unwrap().len() == 1
    })
    .await
    .expect("the event behind the huge error is handled");
    let letters = dead_letters(&app).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let error = &letters[0].message.headers["dlt.error"];
    assert!(error.len() <= 4096, "dlt.error is {} bytes", error.len());
    assert!(error.contains("hhhh") && error.contains("[cut "), "{error}");
    // The group stores its position just after it commits the batch's writes.
    let bus = app.platform.bus().clone();
    wait_for(10, || async {
        bus.lag("bad", "coupon-issued").await.unwrap() == 0
    })
    .await
    .expect("the group is not stuck");
    app.stop().await;
}
crate::on_all_backends!(huge_error, a_huge_error_does_not_wedge_the_group);

/// A statistic pushed past 2^63 - 1: the event is dead-lettered as a permanent error at once
/// (on SQLite the sum became a float and the statistics answered 500 for ever; on PostgreSQL
/// the error was retried as if the database were down), and the statistics stay readable.
async fn an_overflowing_counter_is_a_permanent_dead_letter(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| c.consumers.max_retries = 3).await;
    let id = app
        .campaign(CampaignSpec {
            public_stats: true,
            ..with_plugin(
                spec(3),
                "stats",
                &wasm("misbehave"),
                &["stats"],
                &[("mode", "big-stat")],
            )
        })
        .await;
    for user in ["a", "b", "c"] {
        assert_eq!(app.request(&id, user).await.0, 202);
    }
    wait_for(30, || async { dead_letters(&app).await.len() >= 2 })
        .await
        .expect("two events dead-lettered");
    for letter in dead_letters(&app).await {
        let h = &letter.message.headers;
        assert_eq!(h["dlt.attempts"], "1", "not retried: {h:?}");
        assert!(h["dlt.error"].contains("would overflow"), "{h:?}");
    }
    // A counter the plugin named itself is an operator's to read; the public does not see it.
    let (status, stats) = app
        .admin_get(&format!("/api/v1/campaigns/{id}/stats"))
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["counters"]["big"], json!(1i64 << 62), "{stats}");
    let (status, public) = app.get(&format!("/api/v1/campaigns/{id}/stats")).await;
    assert_eq!(status, 200, "{public}");
    assert!(public["counters"].get("big").is_none(), "{public}");
    app.stop().await;
}
crate::on_all_backends!(
    counter_overflow,
    an_overflowing_counter_is_a_permanent_dead_letter
);

/// `value × capacity` must fit the revenue counter; times must be RFC 3339 with 4-digit years.
/// Refused by the admin API with 422 and by the watcher as a refused file, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_numbers_that_overflow_are_refused() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let folder = dir.path().join("campaigns");
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    let put = |id: &str, body: Value| {
        app.client
            .put(app.url(&format!("/api/v1/admin/campaigns/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let cases = [
        (
            json!({"name": "x", "capacity": 3, "value": 1i64 << 62}),
            "value × capacity",
        ),
        (
            json!({"name": "x", "capacity": 1, "value": 1, "closes_at": "+10000-01-01T00:00:00Z"}),
            "closes_at",
        ),
        (
            json!({"name": "x", "capacity": 100_000_001, "value": 1}),
            "capacity",
        ),
        (
            json!({"name": "x", "capacity": 1, "value": 1, "chunk_size": 4_294_967_296u64}),
            "chunk_size",
        ),
    ];
    for (body, needle) in cases {
        let r = put("overflow", body.clone()).await.unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert!(
            status == 422 || status == 400,
            "{body} answered {status}: {answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    assert_eq!(app.get("/api/v1/campaigns/overflow").await.0, 404);
    std::fs::write(
        folder.join("big.toml"),
        "name = \"Big\"\ncapacity = 3\nvalue = 4611686018427387904\n",
    )
    .unwrap();
    let refused = wait_for(10, || async {
        let (_, files) = admin_campaigns(&app).await;
        files["rejected"]["big"].is_string()
    })
    .await;
    assert!(refused.is_some(), "the file is listed as refused");
    let (_, files) = admin_campaigns(&app).await;
    assert!(
        files["rejected"]["big"]
            .as_str()
            .unwrap()
            .contains("value × capacity"),
        "{files}"
    );
    assert_eq!(app.get("/api/v1/campaigns/big").await.0, 404);
    app.stop().await;
}

async fn admin_campaigns(app: &TestApp) -> (u16, Value) {
    app.admin_get("/api/v1/admin/campaigns").await
}

/// How many times this process applied the campaign (its `firstcome_campaign_applies_total`).
async fn applies(app: &TestApp, id: &str) -> u64 {
    let text = app.text("/metrics").await;
    let prefix = format!("firstcome_campaign_applies_total{{campaign=\"{id}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

const TOMORROW: &str =
    "opens_at = \"2099-01-02T00:00:00Z\"\ncloses_at = \"2099-01-03T00:00:00Z\"\n";

/// An editor saves a campaign that opens tomorrow in place: truncate, the first three lines,
/// a 1.2 s pause, then the times. Requests every 100 ms during the pause are never admitted
/// (the half-written file opened the campaign a day early), and the same content saved again
/// line by line is not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_file_saved_in_place_is_applied_whole_once() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let folder = dir.path().join("campaigns");
    std::fs::create_dir_all(&folder).unwrap();
    let head = "name = \"Tomorrow\"\ncapacity = 100\nvalue = 1\n";
    let file = folder.join("tomorrow.toml");
    std::fs::write(&file, format!("{head}{TOMORROW}")).unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| c.campaigns_settle_ms = 2_000).await;
    assert_eq!(app.get("/api/v1/campaigns/tomorrow").await.0, 200);
    assert_eq!(applies(&app, "tomorrow").await, 1);

    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut out, head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(1_200) {
        n += 1;
        answers.push(app.request("tomorrow", &format!("early-{n}")).await.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::io::Write::write_all(&mut out, TOMORROW.as_bytes()).unwrap();
    drop(out);
    assert!(
        answers.iter().all(|s| *s == 410),
        "admitted before opening: {answers:?}"
    );

    // 60 saves in place, one line every 5 ms, of the same document.
    let text = format!("{head}{TOMORROW}");
    for _ in 0..60 {
        let mut out = std::fs::File::create(&file).unwrap();
        for line in text.split_inclusive('\n') {
            std::io::Write::write_all(&mut out, line.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(
        app.backends.store.count_coupons("tomorrow").await.unwrap(),
        0
    );
    assert_eq!(applies(&app, "tomorrow").await, 1, "no spurious applies");
    let (_, files) = admin_campaigns(&app).await;
    assert_eq!(files["rejected"], json!({}), "{files}");

    // A real change is applied once it settles.
    std::fs::write(&file, "name = \"Tomorrow\"\ncapacity = 100\nvalue = 1\n").unwrap();
    wait_for(10, || async {
        app.request("tomorrow", "on-time").await.0 == 202
    })
    .await
    .expect("the opened campaign admits");
    assert_eq!(applies(&app, "tomorrow").await, 2);
    app.stop().await;
}

/// The version last applied stays in force across a restart whose file is refused; the file is
/// listed as refused with its reason until a valid one replaces it.
async fn the_version_in_force_survives_a_refused_file_and_a_restart(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let folder = dir.path().join("campaigns");
    std::fs::create_dir_all(&folder).unwrap();
    // Ids are unique: the Redis the tests share keeps every campaign's admissions.
    let id = unique("kept");
    let file = folder.join(format!("{id}.toml"));
    std::fs::write(&file, "name = \"Kept\"\ncapacity = 5\nvalue = 1\n").unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;
    assert_eq!(app.request(&id, "first").await.0, 202);
    app.wait_issued(&id, 1, 20).await;
    app.stop().await;

    std::fs::write(&file, "name = \"Kept\"\ncapacity = 0\nvalue = 1\n").unwrap();
    let app = spawn_app_on(backends.reopen().await, dir.clone(), |_| {}).await;
    let (status, campaign) = app.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(status, 200, "the version in force runs: {campaign}");
    assert_eq!(campaign["capacity"], 5, "{campaign}");
    let (_, files) = admin_campaigns(&app).await;
    let reason = files["rejected"][&id].as_str().unwrap_or_default();
    assert!(reason.contains("capacity"), "{files}");
    assert_eq!(app.request(&id, "second").await.0, 202);
    app.wait_issued(&id, 2, 20).await;

    std::fs::write(&file, "name = \"Kept\"\ncapacity = 7\nvalue = 1\n").unwrap();
    wait_for(10, || async {
        app.get(&format!("/api/v1/campaigns/{id}")).await.1["capacity"] == 7
    })
    .await
    .expect("the fixed file is applied");
    let (_, files) = admin_campaigns(&app).await;
    assert_eq!(files["rejected"], json!({}), "{files}");
    app.stop().await;

    // Removed while the host was down: stopped at start-up.
    std::fs::remove_file(&file).unwrap();
    let app = spawn_app_on(backends.reopen().await, dir, |_| {}).await;
    assert_eq!(app.get(&format!("/api/v1/campaigns/{id}")).await.0, 404);
    app.stop().await;
}
crate::on_all_backends!(
    version_in_force,
    the_version_in_force_survives_a_refused_file_and_a_restart
);

/// Clients that open a connection, send half a request head and stop: closed after the header
/// read timeout, while admission keeps answering; past the connection cap, new clients wait
/// for a free slot instead of the host running out of file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_and_capped() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| {
        c.http.header_read_timeout_ms = 1_000;
        c.http.body_read_timeout_ms = 1_000;
        c.http.max_connections = 400;
    })
    .await;
    let id = app.campaign(spec(10_000)).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /api/v1/campaigns/x/requests HTTP/1.1\r\nHost: x\r\nContent-")
            .await
            .unwrap();
        slow.push(s);
    }
    // Admission answers as usual meanwhile.
    let started = Instant::now();
    for i in 0..20 {
        assert_eq!(app.request(&id, &format!("fast-{i}")).await.0, 202);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "admission slowed down: {:?}",
        started.elapsed()
    );
    // Every half request is closed within a few seconds.
    let closed = futures::future::join_all(slow.iter_mut().map(|s| async move {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        // Closed: end of stream, a reset, or a 408 answer before the close.
        matches!(read, Ok(Ok(_) | Err(_)))
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} half requests still open after 5 s");

    // A body that stops half-way is answered 408 with the usual error body.
    let mut late = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/campaigns/{id}/requests HTTP/1.1\r\nHost: x\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"user_id\""
    );
    late.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), late.read_to_string(&mut answer));
    let _ = read.await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");

    // A body dripped one byte at a time still has to arrive whole within the deadline.
    let mut drip = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = r#"{"user_id":"drip"}"#;
    let head = format!(
        "POST /api/v1/campaigns/{id}/requests HTTP/1.1\r\nHost: x\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    drip.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for byte in body.as_bytes() {
        if drip.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), drip.read_to_string(&mut answer));
    let _ = read.await;
    assert!(answer.starts_with("HTTP/1.1 408"), "dripped body: {answer}");

    // At the cap: the next client waits in the backlog until a slot frees, then is served.
    let mut hog = Vec::new();
    for _ in 0..400 {
        hog.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let started = Instant::now();
    let (status, _) = app.request(&id, "after-the-hogs").await;
    assert_eq!(status, 202);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "served after {waited:?}"
    );
    drop(hog);
    app.stop().await;
}

/// User ids are compared exactly as sent (NFC and NFD are two users); ids with format
/// characters (zero-width, bidi overrides and isolates) are refused.
async fn user_ids_that_look_alike(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    let id = app.campaign(spec(10)).await;
    for user in [
        "ad\u{200b}min",
        "admin\u{202e}",
        "a\u{2066}b\u{2069}",
        "\u{feff}x",
    ] {
        let (status, body) = app.request(&id, user).await;
        assert_eq!(status, 422, "{user:?}: {body}");
        assert_eq!(body["code"], "invalid_user_id", "{user:?}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("format characters")
        );
    }
    assert_eq!(app.request(&id, "j\u{fc}rgen").await.0, 202);
    assert_eq!(app.request(&id, "ju\u{308}rgen").await.0, 202);
    app.wait_issued(&id, 2, 20).await;
    app.stop().await;
}
crate::on_all_backends!(look_alike_ids, user_ids_that_look_alike);

/// An operator's setting out of range stops the host at start with the setting's name.
#[test]
fn settings_out_of_range_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (name, value, needle) in [
        ("FIRSTCOME_CAMPAIGNS_POLL_MS", "0", "campaigns_poll_ms = 0"),
        (
            "FIRSTCOME_CONSUMERS__MAX_RETRIES",
            "1000000",
            "consumers.max_retries",
        ),
        ("FIRSTCOME_KAFKA__PARTITIONS", "-1", "kafka.partitions = -1"),
        (
            "FIRSTCOME_HTTP__MAX_CONNECTIONS",
            "0",
            "http.max_connections",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
            .arg("serve")
            .env("FIRSTCOME_DATA_DIR", dir.path())
            .env("FIRSTCOME_LISTEN", "127.0.0.1:0")
            .env(name, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle) && err.contains("out of range"),
            "{name}: {err}"
        );
    }
}

/// A Redis Cluster URL the host cannot use stops it at start with what to fix, and no password.
#[test]
fn bad_cluster_urls_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (url, needle) in [
        ("redis+cluster://", "has no port"),
        ("redis+cluster://app:hunter2@h:7000/2", "only database 0"),
        ("redis+cluster://h:7000?tls=1", "no query string"),
        ("rediss+cluster://h:7000", "not supported"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
            .arg("serve")
            .env("FIRSTCOME_DATA_DIR", dir.path())
            .env("FIRSTCOME_LISTEN", "127.0.0.1:0")
            .env("FIRSTCOME_REDIS_URL", url)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{url}: {err}");
        assert!(!err.contains("hunter2"), "the password is not shown: {err}");
    }
}

/// What does not belong in a campaign folder changes nothing: a FIFO, a folder or a link to a
/// device named `*.toml` is refused without blocking the host; the admin API refuses a
/// campaign whose file name is taken by a folder before applying anything; and a folder that
/// cannot be read (moved away, unmounted) stops no campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn odd_campaign_folder_contents_change_nothing() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let folder = dir.path().join("campaigns");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("ok.toml"),
        "name = \"Ok\"\ncapacity = 5\nvalue = 1\n",
    )
    .unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    assert_eq!(app.get("/api/v1/campaigns/ok").await.0, 200);

    let fifo = std::process::Command::new("mkfifo")
        .arg(folder.join("fifo.toml"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::fs::create_dir(folder.join("dir.toml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", folder.join("zero.toml")).unwrap();
    wait_for(10, || async {
        let (_, files) = admin_campaigns(&app).await;
        let refused = |id: &str, why: &str| {
            files["rejected"][id]
                .as_str()
                .is_some_and(|r| r.contains(why))
        };
        refused("fifo", "not a regular file")
            && refused("dir", "not a regular file")
            && refused("zero", "outside the campaign folder")
    })
    .await
    .expect("each is refused: not a regular file, or a link out of the folder");
    assert_eq!(app.get("/health/live").await.0, 200);
    assert_eq!(app.request("ok", "still-served").await.0, 202);

    let r = app
        .client
        .put(app.url("/api/v1/admin/campaigns/dir"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "Dir", "capacity": 5, "value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "campaign_file_conflict", "{body}");
    assert_eq!(
        app.get("/api/v1/campaigns/dir").await.0,
        404,
        "nothing applied"
    );

    let away = folder.with_extension("away");
    std::fs::rename(&folder, &away).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        app.get("/api/v1/campaigns/ok").await.0,
        200,
        "an unreadable folder stops nothing"
    );
    std::fs::rename(&away, &folder).unwrap();
    app.stop().await;
}
