//! The headline property under load: 5,000 requests from 1,000 users for 100 coupons.

use std::collections::HashSet;

use rand::seq::SliceRandom;

use crate::helpers::{Backend, coupons, spawn_app, spec, storm};
use crate::on_all_backends;

async fn exactly_capacity_under_a_storm(backend: Backend) {
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
