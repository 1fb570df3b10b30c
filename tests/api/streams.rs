//! Server-sent events: a campaign's live statistics and one user's request.

use std::time::Duration;

use serde_json::Value;

use firstcome_core::campaign::CampaignSpec;

use crate::helpers::{Backend, TestApp, spawn_app, spec, storm, wasm, with_plugin};

/// Reads `event:`/`data:` frames of a server-sent event stream.
struct Frames {
    response: reqwest::Response,
    buffer: String,
}

impl Frames {
    async fn open(app: &TestApp, path: &str) -> Self {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Self {
            response: r,
            buffer: String::new(),
        }
    }

    /// The next event (name, data), skipping keep-alive comments; `None` when the stream ends.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_owned)
                };
                if let (Some(event), Some(data)) = (field("event: "), field("data: ")) {
                    return Some((event, serde_json::from_str(&data).unwrap()));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("a frame within 20 s")
                .unwrap()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A subscriber sees the snapshot, then coalesced updates, then the sold-out state; a late
/// subscriber starts from the current snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_stream_sends_the_snapshot_then_updates_then_the_final_state() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app
        .campaign(CampaignSpec {
            public_stats: true,
            ..with_plugin(spec(30), "stats", &wasm("stats"), &["stats"], &[])
        })
        .await;
    let path = format!("/api/v1/campaigns/{id}/stats/stream");
    let mut frames = Frames::open(&app, &path).await;
    let (event, first) = frames.next().await.unwrap();
    assert_eq!(event, "stats");
    assert_eq!(
        (first["issued"].as_i64(), first["remaining"].as_i64()),
        (Some(0), Some(30)),
        "{first}"
    );

    let users = (0..90).map(|i| format!("u{i}")).collect();
    storm(&[&app], &id, users, false).await;
    let mut seen = 1;
    let last = loop {
        let (_, s) = frames.next().await.expect("updates until sold out");
        seen += 1;
        if s["issued"] == 30 && s["revenue"] == 30_000 && s["queued"] == 0 {
            break s;
        }
    };
    assert_eq!(
        (last["remaining"].as_i64(), last["admitted"].as_i64()),
        (Some(0), Some(30)),
        "{last}"
    );
    assert_eq!(last["by_age_group"]["unknown"], 30, "{last}");
    assert!(
        seen < 30,
        "30 issuances and 90 requests were coalesced into {seen} frames"
    );

    let mut late = Frames::open(&app, &path).await;
    let (_, now) = late.next().await.unwrap();
    assert_eq!(
        (now["issued"].as_i64(), now["remaining"].as_i64()),
        (Some(30), Some(0)),
        "{now}"
    );
    app.stop().await;
}

/// A user's request stream goes from queued to issued, then ends; with no request it says
/// `none` and ends; an unknown campaign is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_stream_follows_one_request_until_issued() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app.campaign(spec(5)).await;
    assert_eq!(app.request(&id, "alice").await.0, 202);
    let mut frames = Frames::open(
        &app,
        &format!("/api/v1/campaigns/{id}/requests/alice/stream"),
    )
    .await;
    let mut statuses = Vec::new();
    while let Some((event, status)) = frames.next().await {
        assert_eq!(event, "status");
        statuses.push(status);
    }
    let last = statuses.last().expect("at least one status");
    assert_eq!(last["status"], "issued", "{statuses:?}");
    assert!(last["coupon"]["code"].is_string(), "{last}");
    assert!(
        statuses
            .iter()
            .all(|s| s["status"] == "queued" || s["status"] == "issued"),
        "{statuses:?}"
    );

    let mut none = Frames::open(&app, &format!("/api/v1/campaigns/{id}/requests/bob/stream")).await;
    assert_eq!(none.next().await.unwrap().1["status"], "none");
    assert!(none.next().await.is_none(), "the stream ends");

    let (status, body) = app.get("/api/v1/campaigns/nope/stats/stream").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_campaign"))
    );
    let (status, body) = app
        .get(&format!("/api/v1/campaigns/{id}/requests/%20x/stream"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_user_id")),
        "{body}"
    );
    app.stop().await;
}
