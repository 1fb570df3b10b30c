//! A real Prometheus (Debian's package) scrapes a running host with the shipped scrape
//! settings; its API then has the host's series, and every series the Grafana dashboard
//! queries is one the host exports.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::helpers::{Backend, free_port, spawn_app, spec, storm, wait_for, with_history};

struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus with `deploy/prometheus.yml`, pointed at `target` and scraping every second.
fn start_prometheus(target: &str) -> Prometheus {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let shipped = std::fs::read_to_string(root.join("deploy/prometheus.yml")).unwrap();
    assert!(shipped.contains("firstcome:8081") && shipped.contains("metrics_path: /metrics"));
    let config = shipped
        .replace("firstcome:8081", target)
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus runs (apt-get install prometheus)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn query(client: &reqwest::Client, prometheus: &Prometheus, promql: &str) -> Vec<Value> {
    let Ok(r) = client
        .get(format!("{}/api/v1/query", prometheus.url))
        .query(&[("query", promql)])
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = r.json().await.unwrap_or_default();
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_host_and_the_dashboard_queries_exported_series() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app.campaign(with_history(spec(20))).await;
    storm(
        &[&app],
        &id,
        (0..30).map(|i| format!("u{i}")).collect(),
        false,
    )
    .await;
    app.wait_issued(&id, 20, 20).await;

    let target = app.address.trim_start_matches("http://").to_owned();
    let prometheus = start_prometheus(&target);
    let client = reqwest::Client::new();
    let admitted = format!("firstcome_admissions_total{{campaign=\"{id}\",result=\"admitted\"}}");
    wait_for(60, || async {
        query(&client, &prometheus, &admitted)
            .await
            .first()
            .is_some_and(|s| s["value"][1] == "20")
    })
    .await
    .expect("Prometheus has the host's admissions");
    let up = query(&client, &prometheus, "up{job=\"firstcome\"}").await;
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let sold_out = query(
        &client,
        &prometheus,
        &format!("firstcome_admissions_total{{campaign=\"{id}\",result=\"sold_out\"}}"),
    )
    .await;
    assert_eq!(sold_out[0]["value"][1], "10");

    // Every metric the dashboard uses is exported by the host.
    let exported = app.text("/metrics").await;
    let names: BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/dashboards/firstcome.json")).unwrap(),
    )
    .unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("firstcome_") {
                    used.insert(word.to_owned());
                }
            }
        }
    }
    assert!(used.len() >= 20, "{used:?}");
    for metric in &used {
        assert!(
            names.contains(metric.as_str()),
            "the dashboard queries {metric}, which /metrics does not export"
        );
    }
    app.stop().await;
}
