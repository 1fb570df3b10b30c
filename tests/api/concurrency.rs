//! The headline property under load: 5,000 requests from 1,000 users for 100 coupons.

use std::collections::HashSet;

use rand::seq::SliceRandom;

use crate::helpers::{Backend, coupons, spawn_app, spec, storm};
use crate::on_all_backends;

pub(crate) async fn exactly_capacity_under_a_storm(backend: Backend) {
    let app = spawn_app(backend).await;
    let campaign = app.campaign(spec(100)).await;
    // 1,000 users, each asking five times, in random order, 200 at a time.
    let mut requests: Vec<String> = (0..1000)
        .flat_map(|u| vec![format!("user-{u}"); 5])
        .collect();
    requests.shuffle(&mut rand::rng());
    let accepted = storm(&[&app], &campaign, requests, false).await;
    assert_eq!(accepted.len(), 100, "exactly capacity requests accepted");
    let mut positions: Vec<i64> = accepted.values().copied().collect();
    positions.sort();
    assert_eq!(positions, (1..=100).collect::<Vec<_>>());

    app.wait_issued(&campaign, 100, 30).await;
    // Let any stray chunk land before counting.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let issued = coupons(&app.backends.store, &campaign).await;
    assert_eq!(issued.len(), 100, "exactly capacity coupons");
    let users: HashSet<&String> = issued.iter().map(|(u, _)| u).collect();
    assert_eq!(users.len(), 100, "no user holds two coupons");
    for (user, position) in &issued {
        assert_eq!(
            accepted.get(user),
            Some(position),
            "{user} issued at its admitted position"
        );
    }
    let row = app
        .backends
        .store
        .campaign_row(&campaign)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.issued, 100, "the campaign's issued count agrees");

    let (_, view) = app.get(&format!("/api/v1/campaigns/{campaign}")).await;
    assert_eq!(view["issued"], 100);
    assert_eq!(view["admitted"], 100);
    assert_eq!(view["remaining"], 0);
    assert_eq!(view["queued"], 0);
    assert_eq!(view["status"], "sold_out");
    app.stop().await;
}

on_all_backends!(storm, exactly_capacity_under_a_storm);

/// After a sell-out each host answers the campaign itself: `410`, or `409` with the position to
/// a user Redis admitted, with Redis gone; a raised capacity clears the flag at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sold_out_campaign_is_answered_without_redis() {
    use crate::durability::OwnRedis;
    use crate::helpers::{Backends, spawn_app_on};

    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let redis = OwnRedis::start(dir.path(), &[]).await;
    let backends = Backends::open_with_redis(Backend::RedisMariaDb, dir.path(), &redis.url()).await;
    let app = spawn_app_on(backends, dir.clone(), |config| {
        config.admission.sold_out_recheck_ms = 60_000;
    })
    .await;
    let mut spec = spec(3);
    let campaign = app.campaign(spec.clone()).await;
    for user in ["u1", "u2", "u3"] {
        assert_eq!(app.request(&campaign, user).await.0, 202);
    }
    assert_eq!(app.request(&campaign, "u4").await.0, 410);
    flag_raised(&app, &campaign, 1).await;

    // A raised capacity is offered at once.
    spec.capacity = 4;
    app.platform
        .apply_campaign(firstcome_core::campaign::Campaign::new(&campaign, spec).unwrap())
        .await
        .unwrap();
    let (status, body) = app.request(&campaign, "u4").await;
    assert_eq!((status, body["position"].as_i64()), (202, Some(4)));
    assert_eq!(app.request(&campaign, "u5").await.0, 410);
    flag_raised(&app, &campaign, 2).await;

    drop(redis);
    let (status, body) = app.request(&campaign, "u2").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "duplicate_request");
    assert!(
        body["message"].as_str().unwrap().contains("(position 2)"),
        "{body}"
    );
    let (status, body) = app.request(&campaign, "u9").await;
    assert_eq!((status, body["code"].as_str()), (410, Some("sold_out")));
    app.stop().await;
}

/// Waits until the host answers the campaign from its sold-out flag, for the `round`th time
/// (the flag is raised once the admitted users are read, in the background): probes with new
/// users, each answered `410`, until the flag's counter has grown.
async fn flag_raised(app: &crate::helpers::TestApp, campaign: &str, round: usize) {
    let answered = || async {
        let metrics = app.text("/metrics").await;
        let prefix =
            format!("firstcome_admissions_sold_out_flag_total{{campaign=\"{campaign}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as usize)
    };
    let before = answered().await;
    for probe in 0..200 {
        let (status, _) = app
            .request(campaign, &format!("probe-{round}-{probe}"))
            .await;
        assert_eq!(status, 410);
        if answered().await > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the sold-out flag was never raised");
}
