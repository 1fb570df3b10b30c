//! The OpenAPI document against running hosts: it is served and printed by the CLI alike, its
//! interactive page lists every operation and runs one in a real browser without the internet,
//! and schemathesis (PyPI), generating valid and invalid requests from the document, finds no
//! 5xx and no response that differs from the document, on each backend.
//!
//! (That every route the router serves is in the document is checked by a unit test of
//! `api`, which can read the router itself.)

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::browser::{Browser, artifacts};
use crate::helpers::{
    ADMIN_TOKEN, Backend, Backends, firstcome, redis_url, spawn_app, spawn_app_on, spec, wait_for,
    wasm, with_plugin,
};

fn operations(document: &Value) -> usize {
    document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum()
}

#[tokio::test]
async fn the_document_is_served_and_printed_by_the_cli_alike() {
    let app = spawn_app(Backend::Embedded).await;
    let r = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    let served: Value = r.json().await.unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(served["info"]["title"], "firstcome");
    assert!(
        operations(&served) >= 22,
        "{} operations",
        operations(&served)
    );
    let generated = serde_json::to_value(firstcome_api::openapi()).unwrap();
    assert_eq!(served, generated);
    let printed: Value = serde_json::from_str(&firstcome(&["openapi"], &[])).unwrap();
    assert_eq!(printed, served);

    // The interactive page and its files come from the binary.
    let page = app.client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200, "redirected to /api/docs/");
    assert_eq!(page.url().path(), "/api/docs/");
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let init = app.text("/api/docs/swagger-initializer.js").await;
    assert!(init.contains("\"url\": \"/api/openapi.json\""), "{init}");
    let missing = app
        .client
        .get(app.url("/api/docs/no-such-file.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_interactive_page_runs_a_route_in_a_real_browser() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app.campaign(spec(5)).await;
    let (_, document) = app.get("/api/openapi.json").await;
    let browser = Browser::start().await;
    browser.resize(1280, 1600).await;
    browser.open(&app.url("/api/docs/")).await;
    let expected = operations(&document);
    let rendered = || async {
        browser
            .execute("return document.querySelectorAll('.opblock').length;")
            .await
            .as_u64()
            .unwrap_or(0) as usize
    };
    let listed = wait_for(30, || async { rendered().await == expected }).await;
    assert!(
        listed.is_some(),
        "the page lists {} of {expected} operations",
        rendered().await
    );

    // Open "list campaigns", run it (the page starts in "try it out" mode), and read the
    // answer the page shows.
    let click = |selector: &'static str| {
        let browser = &browser;
        async move {
            let script = format!(
                "const e = document.querySelector('{selector}'); if (e) {{ e.click(); return true; }} return false;"
            );
            let clicked = wait_for(10, || async {
                browser.execute(&script).await.as_bool().unwrap_or(false)
            })
            .await;
            assert!(clicked.is_some(), "nothing to click at {selector}");
        }
    };
    let answer = || async {
        browser
            .execute(
                "const b = document.querySelector('#operations-campaigns-listCampaigns .live-responses-table'); \
                 return b ? b.textContent : '';",
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // A click that lands while the panel is still rendering is lost: press again each second
    // until the answer shows. Now and then Swagger UI also enters its loading state on a click
    // without sending the request (the host never sees it, nothing is thrown): then the page is
    // loaded again, up to three times, each said in the output.
    let execute = "const e = document.querySelector('#operations-campaigns-listCampaigns .execute'); \
                   if (e) e.click();";
    let mut shown = None;
    for round in 1..=3 {
        if round > 1 {
            eprintln!(
                "Swagger UI sent no request on Execute; loading the page again (round {round})"
            );
            browser.open(&app.url("/api/docs/")).await;
            wait_for(30, || async { rendered().await == expected }).await;
        }
        click("#operations-campaigns-listCampaigns .opblock-summary-control").await;
        click("#operations-campaigns-listCampaigns .execute").await;
        let mut polls = 0;
        shown = wait_for(8, || {
            polls += 1;
            let again = polls % 50 == 0;
            let (browser, answer, id) = (&browser, &answer, &id);
            async move {
                let text = answer().await;
                if again && text.is_empty() {
                    browser.execute(execute).await;
                }
                text.contains("200") && text.contains(id.as_str())
            }
        })
        .await;
        if shown.is_some() {
            break;
        }
    }
    assert!(shown.is_some(), "the page shows: {}", answer().await);

    // Nothing was fetched from anywhere but the host: the page works offline.
    let foreign = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name) \
             .filter(n => !n.startsWith(location.origin));",
        )
        .await;
    assert_eq!(foreign, serde_json::json!([]), "fetched from elsewhere");
    let shot = browser.screenshot("openapi-page.png").await;
    assert!(shot.starts_with(artifacts()));
    drop(browser);
    app.stop().await;
}

/// What one schemathesis run found, with everything it printed.
#[derive(Debug, PartialEq)]
enum Fuzzed {
    Passed(String),
    /// A failed check, a server error, a response off the document, a schema or network error:
    /// a finding about the API, never retried.
    Failed(String),
    /// The tool broke inside itself (an exception of its own, "Runtime Error" in its report,
    /// or no report at all) and found nothing about the API: worth one more run.
    ToolCrashed(String),
}

/// Reads a finished run: its exit status and its JUnit report (`None` when it wrote none).
/// Only a run whose report has no failure and whose every error is schemathesis's
/// "Runtime Error" (an exception it did not classify: its own, or hypothesis's, such as
/// CPython 3.11.7's `AST constructor recursion depth mismatch`) counts as a tool crash.
fn read_run(passed: bool, junit: Option<&str>, text: String) -> Fuzzed {
    if passed {
        return Fuzzed::Passed(text);
    }
    let Some(junit) = junit else {
        return Fuzzed::ToolCrashed(text);
    };
    let failures = regex::Regex::new(r#"<testsuites[^>]*\bfailures="(\d+)""#)
        .unwrap()
        .captures(junit)
        .map(|c| c[1].to_owned());
    let errors: Vec<String> = regex::Regex::new(r"<error\b[^>]*>([^<]*)</error>")
        .unwrap()
        .captures_iter(junit)
        .map(|c| c[1].trim().to_owned())
        .collect();
    let own_crash = |error: &String| error.starts_with("Runtime Error");
    if failures.as_deref() == Some("0") && !errors.is_empty() && errors.iter().all(own_crash) {
        Fuzzed::ToolCrashed(text)
    } else {
        Fuzzed::Failed(text)
    }
}

/// Runs schemathesis with `tests/schemathesis.toml` against `base`, every check on, the admin
/// token given, its JUnit report at `artifacts/schemathesis/{report}.xml`.
async fn schemathesis(base: &str, report: &str) -> Fuzzed {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    // A fixed seed keeps CI repeatable; set FC_SCHEMATHESIS_SEED to explore other inputs.
    let seed = std::env::var("FC_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("FC_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into());
    let reports = artifacts().join("schemathesis");
    std::fs::create_dir_all(&reports).unwrap();
    let junit = reports.join(format!("{report}.xml"));
    let _ = std::fs::remove_file(&junit);
    let out = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(root.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/api/openapi.json"))
        .args(["--checks", "all", "--workers", "2", "--seed", &seed])
        .args(["--max-examples", &examples])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        // Its cache (`.schemathesis/`) goes with the reports, not into the source tree.
        .current_dir(&reports)
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs (tests/run.sh installs it from tests/tools/requirements.txt)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    read_run(
        out.status.success(),
        std::fs::read_to_string(&junit).ok().as_deref(),
        text,
    )
}

#[test]
fn only_an_error_inside_schemathesis_is_read_as_its_crash() {
    let report = |failures: u32, errors: &[&str]| {
        let cases: String = errors
            .iter()
            .map(|e| {
                format!("<testcase name=\"POST /x\"><error type=\"error\">{e}</error></testcase>")
            })
            .collect();
        format!(
            "<?xml version=\"1.0\"?>\n<testsuites errors=\"{}\" failures=\"{failures}\" skipped=\"0\" \
             tests=\"3\" time=\"1.0\"><testsuite name=\"schemathesis\">{cases}</testsuite></testsuites>",
            errors.len()
        )
    };
    let crash = "Runtime Error\n\nAST constructor recursion depth mismatch (before=183, after=200)";
    let read = |passed, junit: Option<String>| read_run(passed, junit.as_deref(), "out".into());
    assert_eq!(
        read(true, Some(report(0, &[]))),
        Fuzzed::Passed("out".into())
    );
    assert_eq!(
        read(false, Some(report(0, &[crash]))),
        Fuzzed::ToolCrashed("out".into())
    );
    assert_eq!(read(false, None), Fuzzed::ToolCrashed("out".into()));
    // A finding about the API is never retried, also beside a crash of the tool.
    assert_eq!(
        read(false, Some(report(1, &[]))),
        Fuzzed::Failed("out".into())
    );
    assert_eq!(
        read(false, Some(report(1, &[crash]))),
        Fuzzed::Failed("out".into())
    );
    for finding in [
        "Network Error\n\nConnection aborted",
        "Schema Error\n\nUnresolvable reference",
        "Server Unavailable\n\nrefused",
        "Unresponsive Operation\n\ntimed out",
    ] {
        assert_eq!(
            read(false, Some(report(0, &[crash, finding]))),
            Fuzzed::Failed("out".into())
        );
    }
    // A report it could not be read from is a finding too, not a crash.
    assert_eq!(
        read(false, Some("garbage".into())),
        Fuzzed::Failed("out".into())
    );
}

/// A host with a campaign under the document's example id (`spring-sale`), with the history
/// and stats plugins, so that the examples reach real data; then schemathesis against it.
async fn fuzz(backend: Backend, redis_db: u8) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = if backend == Backend::Embedded {
        Backends::open(backend, dir.path()).await
    } else {
        // Its own Redis database: the example id is the same for every backend.
        let redis = format!("{}/{redis_db}", redis_url().trim_end_matches('/'));
        let client = redis::Client::open(redis.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("FLUSHDB")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        Backends::open_with_redis(backend, dir.path(), &redis).await
    };
    // Schemathesis sends wrong credentials on purpose, many times: the slowing of guesses
    // (tested in `operators`) would answer its later calls `429`.
    let app = spawn_app_on(backends, dir, |c| {
        c.limits.admin_auth_failures_burst = 1_000_000;
    })
    .await;
    let campaign = with_plugin(
        with_plugin(spec(50), "history", &wasm("history"), &["history"], &[]),
        "stats",
        &wasm("stats"),
        &["stats"],
        &[],
    );
    app.platform
        .apply_campaign(firstcome_core::campaign::Campaign::new("spring-sale", campaign).unwrap())
        .await
        .unwrap();
    let mut fuzzed = schemathesis(&app.address, &format!("{backend:?}")).await;
    if let Fuzzed::ToolCrashed(report) = &fuzzed {
        // Said in the output, so that a crash of the tool that a retry hid stays visible.
        eprintln!(
            "schemathesis against {backend:?} crashed inside itself, finding nothing about the \
             API; running it once more. What it printed:\n{report}"
        );
        fuzzed = schemathesis(&app.address, &format!("{backend:?}-retry")).await;
    }
    let report = match fuzzed {
        Fuzzed::Passed(report) => report,
        Fuzzed::Failed(report) => panic!("schemathesis against {backend:?} failed:\n{report}"),
        Fuzzed::ToolCrashed(report) => {
            panic!("schemathesis against {backend:?} crashed inside itself twice:\n{report}")
        }
    };
    assert!(report.contains("28 selected / 28 total"), "{report}");
    // The host is still whole afterwards.
    let (status, _) = app.get("/health/ready").await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the host stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_nothing_off_the_document_embedded() {
    fuzz(Backend::Embedded, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_nothing_off_the_document_on_mariadb() {
    fuzz(Backend::RedisMariaDb, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_nothing_off_the_document_on_postgres() {
    fuzz(Backend::RedisPostgres, 6).await;
}
