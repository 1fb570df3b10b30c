//! Plugins written in Python and JavaScript, built with the pinned toolchains (componentize-py
//! from tests/tools/requirements.txt, componentize-js from tests/tools/package-lock.json, both
//! installed by tests/run.sh) and run in the host: the projects `firstcome plugin new --lang
//! python|js` makes, the examples of `examples/python` and `examples/js`, and the error rules
//! and limits of the sandbox, which hold for a component carrying an interpreter as for one
//! built from Rust.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use firstcome_core::campaign::Campaign;
use serde_json::Value;

use crate::helpers::{
    Backend, Backends, firstcome_output, spawn_app_on, spec, unique, wait_for, with_plugin,
};
use crate::plugins::{FcmStandIn, SmtpServer, plugin_new, user};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Where built components go: a folder of the cargo target directory.
fn out_dir(lang: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        repo().join(target)
    };
    let dir = target.join("components").join(lang);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `command`, panicking with its output when it fails; returns its standard output.
fn run(what: &str, command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| {
        panic!("{what}: {e} (bash tests/run.sh installs the plugin toolchains)")
    });
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the Python module `app` in `dir` into the component `out` with componentize-py (on
/// the PATH of tests/run.sh), for `world` of the WIT package in `wit`.
fn componentize_py(dir: &Path, wit: &str, world: &str, out: &Path) {
    run(
        "componentize-py",
        Command::new("componentize-py")
            .current_dir(dir)
            .args([
                "--wit-path",
                wit,
                "--world",
                world,
                "componentize",
                "-p",
                ".",
                "app",
                "-o",
            ])
            .arg(out),
    );
}

/// The node_modules folder of tests/run.sh's JavaScript toolchain (`FC_TEST_NODE_MODULES`).
fn node_modules() -> PathBuf {
    let dir = std::env::var_os("FC_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .expect(
            "FC_TEST_NODE_MODULES names the componentize-js install (bash tests/run.sh sets it)",
        );
    assert!(
        dir.join(".bin/componentize-js").exists(),
        "{} holds no componentize-js (bash tests/run.sh installs it)",
        dir.display()
    );
    dir
}

/// Builds the JavaScript module `app.js` in `dir` into the component `out` with componentize-js,
/// as the projects' `npm run build` does.
fn componentize_js(dir: &Path, wit: &str, world: &str, out: &Path) {
    run(
        "componentize-js",
        Command::new(node_modules().join(".bin/componentize-js"))
            .current_dir(dir)
            .args(["app.js", "--wit", wit, "--world-name", world])
            .args(["--disable", "http", "fetch-event", "-o"])
            .arg(out),
    );
}

/// The example plugin `examples/{lang}/{name}` (lang: python or js), built for `world`.
fn example(lang: &str, name: &str, world: &str) -> PathBuf {
    let dir = repo().join("examples").join(lang).join(name);
    let out = out_dir(lang).join(format!("{}.wasm", name.replace('-', "_")));
    match lang {
        "python" => componentize_py(&dir, "../../../wit", world, &out),
        _ => componentize_js(&dir, "../../../wit", world, &out),
    }
    out
}

/// Runs `firstcome plugin test COMPONENT --event EVENT ARGS...`: (exit code, stdout + stderr).
fn plugin_test(component: &Path, event: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec![
        "plugin",
        "test",
        component.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let (code, out, err) = firstcome_output(&all);
    (code, format!("{out}{err}"))
}

/// `firstcome plugin new --lang python` makes a module whose pytest passes, that
/// componentize-py (from tests/tools/requirements.txt, on the PATH of tests/run.sh) builds into
/// a component, and that runs in the sandbox on the project's own sample event.
#[test]
fn plugin_new_python_scaffolds_a_working_module() {
    let (_dir, project) = plugin_new("python");
    let pytest = std::process::Command::new("python3")
        .current_dir(&project)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .output()
        .unwrap_or_else(|e| panic!("python3: {e} (bash tests/run.sh installs the Python tools)"));
    assert!(
        pytest.status.success(),
        "pytest: {}{}",
        String::from_utf8_lossy(&pytest.stdout),
        String::from_utf8_lossy(&pytest.stderr)
    );
    let component = project.join("audit_trail.wasm");
    componentize_py(&project, "wit", "consumer", &component);
    let event = project.join("event.json");
    let (code, out, err) = firstcome_output(&[
        "plugin",
        "test",
        component.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--grants",
        "kv,stats",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("log.info \"u1 got coupon #1 of Spring\"")
            && out.contains("kv.increment \"issued.20s\" +1")
            && out.contains("result: ok"),
        "{out}"
    );

    // An exception in the logic is a retryable failure that carries its message.
    let app_py = project.join("app.py");
    let text = std::fs::read_to_string(&app_py).unwrap().replace(
        "    def handle(event: \"types.Event\") -> None:\n",
        "    def handle(event: \"types.Event\") -> None:\n        raise KeyError(\"no profile\")\n",
    );
    assert!(
        text.contains("raise KeyError"),
        "the template's handle() moved"
    );
    std::fs::write(&app_py, text).unwrap();
    componentize_py(&project, "wit", "consumer", &component);
    let (code, out, err) = firstcome_output(&[
        "plugin",
        "test",
        component.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains("plugin returned a retryable error: KeyError: 'no profile'"),
        "{out}{err}"
    );
}

/// The Python example plugin of `examples/`: each hour's coupons counted in its kv store, a
/// digest emailed to the operator every `digest_every` of them, its settings checked at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_hourly_digest_example_counts_and_emails() {
    let component = example("python", "hourly-digest", "consumer-with-init");
    let smtp = SmtpServer::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir, |c| smtp.configure(c)).await;
    let settings = [("operator_email", "desk@shop.test"), ("digest_every", "2")];
    let mut campaign = with_plugin(
        spec(10),
        "hourly-digest",
        &component,
        &["kv", "email"],
        &settings,
    );
    crate::helpers::recipient(&mut campaign, "hourly-digest", "desk@shop.test");
    // Applying compiles the component (CPython inside: tens of seconds in a debug host).
    let id = app.campaign(campaign).await;
    for i in 0..5 {
        assert_eq!(app.request(&id, &format!("user-{i}")).await.0, 202);
    }
    app.wait_issued(&id, 5, 20).await;
    let scope = firstcome_store::Scope {
        campaign_id: id.clone(),
        role: "hourly-digest".into(),
    };
    let store = app.backends.store.clone();
    wait_for(120, || async {
        store
            .kv_counter(&scope, &format!("total:{id}"))
            .await
            .unwrap()
            == 5
    })
    .await
    .expect("the five events counted");
    // Five coupons in one hour (or split over two) make two digests of every second one.
    wait_for(30, || async { smtp.messages().len() >= 2 })
        .await
        .expect("two digests emailed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "{mails:?}");
    let mut totals = Vec::new();
    for (to, subject, _) in &mails {
        assert_eq!(to, "desk@shop.test");
        // "Test campaign: 4 coupons in the hour from 2026-11-30 12:00 UTC, 4 in all"; the totals
        // are 2 and 4, or others up to 5 when the hour turns during the test.
        let rest = subject
            .strip_prefix("Test campaign: ")
            .filter(|r| r.contains(" coupons in the hour from ") && r.ends_with(" in all"))
            .unwrap_or_else(|| panic!("{subject}"));
        let total = rest
            .rsplit(", ")
            .next()
            .unwrap()
            .trim_end_matches(" in all");
        totals.push(total.parse::<i64>().unwrap());
    }
    totals.sort();
    totals.dedup();
    assert!(
        totals.len() == 2 && totals.iter().all(|t| (2..=5).contains(t)),
        "{mails:?}"
    );

    // Its init refuses settings it cannot work with; the campaign is not applied.
    let err = app
        .platform
        .apply_campaign(
            Campaign::new(
                &unique("hd"),
                with_plugin(
                    spec(1),
                    "hourly-digest",
                    &component,
                    &["kv", "email"],
                    &[("digest_every", "5")],
                ),
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("operator_email must be set"),
        "{err}"
    );
}

/// `firstcome plugin new --lang js` makes a module whose node tests pass, that its own `npm run
/// build` turns into a component with componentize-js, and that runs in the sandbox on the
/// project's sample event; an exception in its logic comes back as a retryable failure with
/// its message.
#[test]
fn plugin_new_js_scaffolds_a_working_module() {
    let (_dir, project) = plugin_new("js");
    // What `npm install` fills, from the pinned install of tests/run.sh.
    std::os::unix::fs::symlink(node_modules(), project.join("node_modules")).unwrap();
    let npm = |args: &[&str]| {
        run(
            &format!("npm {}", args.join(" ")),
            Command::new("npm").current_dir(&project).args(args),
        )
    };
    let tests = npm(&["test"]);
    assert!(
        tests.contains("# pass 1") && tests.contains("# fail 0"),
        "{tests}"
    );
    npm(&["run", "build"]);
    let component = project.join("audit_trail.wasm");
    let event = project.join("event.json");
    let (code, out) = plugin_test(&component, &event, &["--grants", "kv,stats"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("log.info \"u1 got coupon #1 of Spring\"")
            && out.contains("kv.increment \"issued.20s\" +1")
            && out.contains("result: ok"),
        "{out}"
    );

    let app_js = project.join("app.js");
    let text = std::fs::read_to_string(&app_js).unwrap().replace(
        "function handle(event) {\n",
        "function handle(event) {\n  JSON.parse('{not json');\n",
    );
    assert!(text.contains("JSON.parse"), "the template's handle() moved");
    std::fs::write(&app_js, text).unwrap();
    npm(&["run", "build"]);
    let (code, out) = plugin_test(&component, &event, &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("plugin returned a retryable error: SyntaxError: "),
        "{out}"
    );
}

/// The JavaScript example plugin of `examples/`: winners with a device get a push templated
/// for their segment, with the coupon in its data, at the FCM stand-in; a winner without one
/// gets an email at the real SMTP server; a winner with neither is counted; a refused device
/// token dead-letters its event at once; bad settings keep the plugin from loading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_segment_push_example_notifies_per_segment() {
    let dir = repo().join("examples/js/segment-push");
    let tests = run(
        "node --test",
        Command::new("node").current_dir(&dir).arg("--test"),
    );
    assert!(tests.contains("# fail 0"), "{tests}");
    let component = example("js", "segment-push", "consumer-with-init");

    let smtp = SmtpServer::start().await;
    let fcm = FcmStandIn::start(0).await;
    let data = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, data.path()).await;
    let (key, fcm_url) = (fcm.key_file.clone(), fcm.base_url.clone());
    let app = spawn_app_on(backends, data, |c| {
        smtp.configure(c);
        c.consumers.max_retries = 2;
        c.push.service_account_file = Some(key);
        c.push.fcm_url = fcm_url;
    })
    .await;
    let mut young = user("young", Some("young@shop.test"), Some("device-young"));
    young.age_group = Some("20s".into());
    let mut older = user("older", Some("older@shop.test"), Some("device-older"));
    older.age_group = Some("40s".into());
    let mail_only = user("mail-only", Some("mail-only@shop.test"), None);
    let nobody = user("nobody", None, None);
    let refused = user("refused", None, Some("unregistered-token"));
    let users = [young, older, mail_only, nobody, refused];
    app.backends.store.upsert_users(&users).await.unwrap();
    let settings = [
        ("currency", "KRW"),
        ("link", "https://shop.test/c/{code}"),
        (
            "body.20s",
            "{user}, you were #{position}: {code} takes {value} off",
        ),
    ];
    let id = app
        .campaign(with_plugin(
            spec(5),
            "segment-push",
            &component,
            &["push", "email", "kv"],
            &settings,
        ))
        .await;
    for u in &users {
        assert_eq!(app.request(&id, &u.user_id).await.0, 202);
    }
    app.wait_issued(&id, 5, 20).await;
    let scope = firstcome_store::Scope {
        campaign_id: id.clone(),
        role: "segment-push".into(),
    };
    let store = app.backends.store.clone();
    let counter = |key: &'static str| {
        let (store, scope) = (store.clone(), scope.clone());
        async move { store.kv_counter(&scope, key).await.unwrap() }
    };
    let bus = app.platform.bus().clone();
    wait_for(60, || async {
        counter("sent.push").await == 2
            && counter("sent.email").await == 1
            && counter("sent.none").await == 1
            && !bus.fetch("coupon-issued.DLT", 10).await.unwrap().is_empty()
    })
    .await
    .expect("two pushes, an email, a winner counted without either, a dead letter");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut issued = std::collections::HashMap::new();
    for u in &users {
        let coupon = store.coupon_of(&id, &u.user_id).await.unwrap().unwrap();
        issued.insert(u.user_id.clone(), coupon);
    }
    let code_of = |user: &str| issued[user].code.clone();
    let sent = fcm.state.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let push_to = |token: &str| {
        sent.iter()
            .find(|m| m["message"]["token"] == token)
            .map(|m| m["message"].clone())
            .unwrap_or_else(|| panic!("no push to {token}: {sent:?}"))
    };
    let young_push = push_to("device-young");
    let position = issued["young"].position;
    assert_eq!(
        young_push["notification"]["body"],
        format!(
            "young, you were #{position}: {} takes 1,000 KRW off",
            code_of("young")
        )
    );
    assert_eq!(
        young_push["notification"]["title"],
        "A coupon for you: Test campaign"
    );
    assert_eq!(young_push["data"]["campaign_id"], id.as_str());
    assert_eq!(young_push["data"]["coupon_code"], code_of("young"));
    assert_eq!(
        young_push["data"]["link"],
        format!("https://shop.test/c/{}", code_of("young"))
    );
    let older_push = push_to("device-older");
    assert_eq!(
        older_push["notification"]["body"],
        format!("{} is yours: 1,000 KRW off.", code_of("older"))
    );
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let (to, subject, body) = &mails[0];
    assert_eq!(to, "mail-only@shop.test");
    assert_eq!(subject, "A coupon for you: Test campaign");
    assert!(
        body.contains(&code_of("mail-only"))
            && body.contains(&format!("https://shop.test/c/{}", code_of("mail-only"))),
        "{body}"
    );
    let letters = bus.fetch("coupon-issued.DLT", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let headers = &letters[0].message.headers;
    assert_eq!(headers["dlt.attempts"], "1", "{headers:?}");
    assert!(
        headers["dlt.error"].contains("permanent error: push refused: "),
        "{headers:?}"
    );

    // Settings it cannot work with keep it from loading, with the reason.
    for (settings, reason) in [
        ([("body", "Hi {name}")], "body: unknown placeholder {name}"),
        ([("titel", "x")], "unknown setting \"titel\""),
    ] {
        let err = app
            .platform
            .apply_campaign(
                Campaign::new(
                    &unique("sp"),
                    with_plugin(spec(1), "segment-push", &component, &["push"], &settings),
                )
                .unwrap(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains(reason), "{err}");
    }
    app.stop().await;
}

/// A Python and a JavaScript plugin that throw, refuse, never return, hoard memory or flood the
/// log: each is stopped, its event retried (or not, when retrying cannot help) and
/// dead-lettered with the reason, exactly as for a Rust component (`plugins.rs`). The same
/// components behaving handle every event on a fresh instance each, within the default
/// timeout: starting an interpreter is not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interpreted_plugins_keep_the_limits_and_error_rules() {
    let tests = repo().join("tests/plugins");
    let python = out_dir("python").join("misbehave.wasm");
    componentize_py(
        &tests.join("python/misbehave"),
        "../../../../wit",
        "consumer",
        &python,
    );
    let js = out_dir("js").join("misbehave.wasm");
    componentize_js(
        &tests.join("js/misbehave"),
        "../../../../wit",
        "consumer",
        &js,
    );

    let data = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, data.path()).await;
    let app = spawn_app_on(backends, data, |c| {
        c.consumers.max_retries = 2;
        c.plugins.max_output_bytes = 256 * 1024;
        // One plugin call at a time: each bad mode must meet its own limit within its 1 s
        // timeout, not run out of time sharing the cores with the others.
        c.consumers.busy_lanes = 1;
    })
    .await;
    // (language, component, what its exception says)
    let langs = [
        ("python", &python, "LookupError: no profile for this user"),
        ("js", &js, "TypeError: no profile for this user"),
    ];
    let mut healthy = Vec::new();
    for (lang, component, _) in &langs {
        let id = app
            .campaign(with_plugin(
                spec(20),
                "good",
                component,
                &["kv"],
                &[("mode", "ok")],
            ))
            .await;
        healthy.push((*lang, id));
    }
    // campaign → (language, mode, attempts, what the dead letter's error says)
    let mut bad = std::collections::HashMap::new();
    for (lang, component, exception) in &langs {
        let cases = [
            ("exception", 3, format!("retryable error: {exception}")),
            (
                "permanent",
                1,
                "permanent error: misbehave: refuses".to_owned(),
            ),
            ("loop", 3, "did not finish within".to_owned()),
            ("alloc", 3, format!("memory limit of {MEMORY_MB} MiB")),
            ("flood", 3, "output limit exceeded".to_owned()),
        ];
        for (mode, attempts, reason) in cases {
            let mut s = with_plugin(spec(1), "bad", component, &["kv"], &[("mode", mode)]);
            let plugin = s.plugins.get_mut("bad").unwrap();
            plugin.timeout_ms = Some(1_000);
            plugin.memory_mb = Some(MEMORY_MB);
            let id = app.campaign(s).await;
            assert_eq!(app.request(&id, "victim").await.0, 202);
            bad.insert(id, (*lang, mode, attempts, reason));
        }
    }
    for (_, id) in &healthy {
        for i in 0..20 {
            assert_eq!(app.request(id, &format!("h{i}")).await.0, 202);
        }
    }
    let bus = app.platform.bus().clone();
    wait_for(120, || async {
        bus.fetch("coupon-issued.DLT", 100).await.unwrap().len() >= bad.len()
    })
    .await
    .expect("every bad event dead-lettered");
    let store = app.backends.store.clone();
    for (lang, id) in &healthy {
        let scope = firstcome_store::Scope {
            campaign_id: id.clone(),
            role: "good".into(),
        };
        wait_for(60, || async {
            store.kv_counter(&scope, "handled").await.unwrap() == 20
        })
        .await
        .unwrap_or_else(|| panic!("{lang}: the healthy events handled"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let letters = bus.fetch("coupon-issued.DLT", 100).await.unwrap();
    assert_eq!(letters.len(), bad.len(), "no healthy event dead-lettered");
    let mut seen = BTreeSet::new();
    for letter in &letters {
        let m = &letter.message;
        let envelope: Value = serde_json::from_str(&m.payload).unwrap();
        let (lang, mode, attempts, reason) = &bad[envelope["campaign_id"].as_str().unwrap()];
        assert_eq!(
            m.headers["dlt.attempts"],
            attempts.to_string(),
            "{lang} {mode}: {:?}",
            m.headers
        );
        assert!(
            m.headers["dlt.error"].contains(reason.as_str()),
            "{lang} {mode}: {}",
            m.headers["dlt.error"]
        );
        seen.insert((*lang, *mode));
    }
    assert_eq!(seen.len(), bad.len());
    assert_eq!(app.get("/health/live").await.0, 200);
    app.stop().await;
}

/// The memory limit of the misbehaving plugins: room for an interpreter to start, and a limit
/// it reaches quickly when it hoards.
const MEMORY_MB: u32 = 64;
