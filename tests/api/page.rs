//! The live campaign page in a real headless browser (Debian's Chromium, driven through
//! chromedriver's WebDriver API): it shows the campaign, its counters follow coupons issued
//! through the API, and it reads on a phone-sized screen. Screenshots are kept in
//! `{target}/artifacts/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, spawn_app, spec, wait_for, wasm, with_plugin};

struct Browser {
    driver: std::process::Child,
    url: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for(30, || async {
            client.get(format!("{url}/status")).send().await.is_ok()
        })
        .await
        .expect("chromedriver answers");
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let created: Value = client
            .post(format!("{url}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session: {created}"))
            .to_owned();
        Self {
            driver,
            url,
            session,
            client,
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.url, self.session);
        let mut request = self.client.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        let answer: Value = r.json().await.unwrap();
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "url", json!({"url": url}))
            .await;
    }

    /// The text of the element with this id.
    async fn text(&self, id: &str) -> String {
        let script =
            format!("const e = document.getElementById('{id}'); return e ? e.textContent : null;");
        let v = self
            .command(
                reqwest::Method::POST,
                "execute/sync",
                json!({"script": script, "args": []}),
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn resize(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// A screenshot, saved as `name` in the artifacts folder; returns its path.
    async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let v = self
            .command(reqwest::Method::GET, "screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_else(|| panic!("a screenshot: {v}")))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = artifacts();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn artifacts() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_page_follows_a_campaign_in_a_real_browser() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app
        .campaign(with_plugin(
            spec(10),
            "stats",
            &wasm("stats"),
            &["stats"],
            &[],
        ))
        .await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/#{id}", app.address)).await;
    wait_for(20, || async {
        browser.text("issued").await == "0" && browser.text("remaining").await == "10"
    })
    .await
    .expect("the page shows the campaign's counters");
    assert_eq!(browser.text("title").await, "Test campaign");
    wait_for(20, || async { browser.text("state").await == "live" })
        .await
        .expect("the stream is live");

    for i in 0..6 {
        assert_eq!(app.request(&id, &format!("u{i}")).await.0, 202);
    }
    wait_for(20, || async {
        browser.text("issued").await == "6" && browser.text("remaining").await == "4"
    })
    .await
    .expect("the counters follow the issuance");
    wait_for(20, || async { browser.text("revenue").await == "6,000" })
        .await
        .expect("revenue from the stats plugin");
    wait_for(20, || async {
        browser.text("plugins").await.contains("stats")
    })
    .await
    .expect("the plugin version per role");
    browser.resize(1280, 900).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let laptop = browser.screenshot("live-page-laptop.png").await;

    browser.resize(390, 844).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let width: Value = browser
        .command(
            reqwest::Method::POST,
            "execute/sync",
            json!({"script": "return document.documentElement.scrollWidth;", "args": []}),
        )
        .await;
    assert!(
        width.as_u64().unwrap() <= 390,
        "no sideways scrolling on a phone: {width}"
    );
    let phone = browser.screenshot("live-page-phone.png").await;
    assert!(
        std::fs::metadata(&laptop).unwrap().len() > 10_000
            && std::fs::metadata(&phone).unwrap().len() > 5_000
    );
    app.stop().await;
}
