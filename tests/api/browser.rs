//! A real headless browser for tests: Debian's Chromium driven through chromedriver's WebDriver
//! API with plain HTTP. Screenshots are kept in `{target}/artifacts/`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::helpers::wait_for;

pub struct Browser {
    driver: std::process::Child,
    url: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Self {
        let port = crate::helpers::free_port();
        // In a process group of its own, which Chromium's processes join, so that dropping
        // the browser ends all of them (killing chromedriver alone leaves Chromium running).
        let driver = std::process::Command::new("chromedriver")
            .process_group(0)
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

    pub async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.url, self.session);
        let mut request = self.client.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        let answer: Value = r.json().await.unwrap();
        answer["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "url", json!({"url": url}))
            .await;
    }

    /// Runs a script in the page; returns what it returns.
    pub async fn execute(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// The text of the element with this id.
    pub async fn text(&self, id: &str) -> String {
        let script =
            format!("const e = document.getElementById('{id}'); return e ? e.textContent : null;");
        let v = self.execute(&script).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// A screenshot, saved as `name` in the artifacts folder; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
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
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub fn artifacts() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("artifacts")
}
