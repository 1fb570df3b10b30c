//! One suite, two admission queues: the Redis script and the in-process twin must agree.

use std::sync::Arc;
use std::time::Duration;

use firstcome_admission::embedded::EmbeddedAdmission;
use firstcome_admission::redis::RedisAdmission;
use firstcome_admission::{Admission, Admit, Floor};
use firstcome_core::campaign::{Campaign, CampaignSpec};

use crate::helpers::{redis_cluster_url, redis_url, spec, unique};

/// No floor: the database has issued nothing.
const NO_FLOOR: Floor = Floor {
    issued: 0,
    last_position: 0,
    campaign_issued: 0,
};

async fn redis() -> Arc<dyn Admission> {
    Arc::new(
        RedisAdmission::connect(&redis_url())
            .await
            .expect("Redis answers"),
    )
}

async fn cluster() -> Arc<dyn Admission> {
    Arc::new(
        RedisAdmission::connect(&redis_cluster_url())
            .await
            .expect("the Redis Cluster answers"),
    )
}

async fn embedded() -> Arc<dyn Admission> {
    // The queue records its admissions in a database of its own, kept until the process ends.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let url = format!("sqlite:{}", dir.path().join("queue.db").display());
    let store = firstcome_store::Store::open(&url).await.unwrap();
    Arc::new(EmbeddedAdmission::new(store))
}

fn campaign(spec: CampaignSpec) -> Campaign {
    Campaign::new(&unique("a"), spec).unwrap()
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod redis_queue {
            $(#[tokio::test] async fn $test() { super::$test(super::redis().await).await })*
        }
        mod cluster_queue {
            $(#[tokio::test] async fn $test() { super::$test(super::cluster().await).await })*
        }
        mod embedded_queue {
            $(#[tokio::test] async fn $test() { super::$test(super::embedded().await).await })*
        }
    };
}

suite!(
    admits_in_order_until_capacity,
    dedupes_users,
    respects_the_window,
    unknown_until_synced,
    claims_fifo_and_acks,
    reclaims_idle_items,
    rebuilds_from_issued_users,
    refuses_a_state_behind_the_database,
    campaigns_are_independent,
    forgets_refused_users,
    concurrent_admissions_never_pass_capacity,
    lists_admitted_users,
);

async fn admits_in_order_until_capacity(q: Arc<dyn Admission>) {
    let c = campaign(spec(3));
    assert!(
        q.sync_campaign(&c, &[], false).await.unwrap(),
        "first sync builds"
    );
    for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
        let got = q.admit(c.id(), user, "r", 0, NO_FLOOR).await.unwrap();
        assert_eq!(
            got,
            Admit::Admitted {
                position: i as i64 + 1
            }
        );
    }
    assert_eq!(
        q.admit(c.id(), "u4", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::SoldOut
    );
    let counts = q.counts(c.id()).await.unwrap();
    assert_eq!((counts.admitted, counts.queued), (3, 3));
    assert_eq!(q.position(c.id(), "u2").await.unwrap(), Some(2));
    assert_eq!(q.position(c.id(), "u4").await.unwrap(), None);
}

async fn dedupes_users(q: Arc<dyn Admission>) {
    let c = campaign(spec(10));
    q.sync_campaign(&c, &[], false).await.unwrap();
    assert_eq!(
        q.admit(c.id(), "u", "r1", 0, NO_FLOOR).await.unwrap(),
        Admit::Admitted { position: 1 }
    );
    assert_eq!(
        q.admit(c.id(), "u", "r2", 0, NO_FLOOR).await.unwrap(),
        Admit::Duplicate { position: 1 }
    );
    assert_eq!(q.counts(c.id()).await.unwrap().admitted, 1);
}

async fn respects_the_window(q: Arc<dyn Admission>) {
    let mut s = spec(10);
    s.opens_at = Some("2030-01-01T00:00:00Z".parse().unwrap());
    s.closes_at = Some("2030-01-02T00:00:00Z".parse().unwrap());
    let c = campaign(s);
    q.sync_campaign(&c, &[], false).await.unwrap();
    let opens = c.opens_at().unwrap();
    let closes = c.closes_at().unwrap();
    assert_eq!(
        q.admit(c.id(), "u", "r", opens - 1, NO_FLOOR)
            .await
            .unwrap(),
        Admit::NotOpen
    );
    assert_eq!(
        q.admit(c.id(), "u", "r", closes, NO_FLOOR).await.unwrap(),
        Admit::Closed
    );
    assert_eq!(
        q.admit(c.id(), "u", "r", opens, NO_FLOOR).await.unwrap(),
        Admit::Admitted { position: 1 }
    );
    assert_eq!(
        q.counts(c.id()).await.unwrap().admitted,
        1,
        "refusals change nothing"
    );
}

async fn unknown_until_synced(q: Arc<dyn Admission>) {
    let c = campaign(spec(1));
    assert_eq!(
        q.admit(c.id(), "u", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::Unknown
    );
    // The issuer is told, so that it has the campaign rebuilt.
    assert!(matches!(
        q.claim(c.id(), "h", 10, None).await,
        Err(firstcome_admission::AdmissionError::Lost(id)) if id == c.id()
    ));
}

async fn claims_fifo_and_acks(q: Arc<dyn Admission>) {
    let c = campaign(spec(100));
    q.sync_campaign(&c, &[], false).await.unwrap();
    for i in 0..25 {
        q.admit(c.id(), &format!("u{i:02}"), &format!("r{i}"), 7, NO_FLOOR)
            .await
            .unwrap();
    }
    let first = q.claim(c.id(), "h1", 10, None).await.unwrap();
    let second = q.claim(c.id(), "h2", 10, None).await.unwrap();
    let positions: Vec<i64> = first.iter().chain(&second).map(|i| i.position).collect();
    assert_eq!(
        positions,
        (1..=20).collect::<Vec<_>>(),
        "FIFO, no item twice"
    );
    assert_eq!(first[0].user_id, "u00");
    assert_eq!(first[0].request_id, "r0");
    assert_eq!(first[0].admitted_at, 7);
    q.ack(c.id(), &first).await.unwrap();
    assert_eq!(
        q.counts(c.id()).await.unwrap().queued,
        15,
        "acked items leave the queue"
    );
    let rest = q.claim(c.id(), "h1", 10, None).await.unwrap();
    assert_eq!(
        rest.iter().map(|i| i.position).collect::<Vec<_>>(),
        (21..=25).collect::<Vec<_>>()
    );
}

async fn reclaims_idle_items(q: Arc<dyn Admission>) {
    let c = campaign(spec(100));
    q.sync_campaign(&c, &[], false).await.unwrap();
    for i in 0..5 {
        q.admit(c.id(), &format!("u{i}"), "r", 0, NO_FLOOR)
            .await
            .unwrap();
    }
    let dead = q.claim(c.id(), "dead-host", 10, None).await.unwrap();
    assert_eq!(dead.len(), 5);
    let idle = Duration::from_millis(200);
    assert!(
        q.claim(c.id(), "live", 10, Some(idle))
            .await
            .unwrap()
            .is_empty(),
        "not idle yet"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let reclaimed = q.claim(c.id(), "live", 10, Some(idle)).await.unwrap();
    assert_eq!(reclaimed, dead, "the dead host's items, in order");
    q.ack(c.id(), &reclaimed).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        q.claim(c.id(), "live", 10, Some(idle))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.counts(c.id()).await.unwrap().queued, 0);
}

async fn rebuilds_from_issued_users(q: Arc<dyn Admission>) {
    let c = campaign(spec(5));
    let issued = vec![("a".to_owned(), 1), ("b".to_owned(), 4)];
    assert!(q.sync_campaign(&c, &issued, false).await.unwrap());
    assert!(
        !q.sync_campaign(&c, &issued, false).await.unwrap(),
        "present: not rebuilt"
    );
    assert_eq!(
        q.admit(c.id(), "a", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::Duplicate { position: 1 }
    );
    assert_eq!(
        q.admit(c.id(), "c", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::Admitted { position: 5 }
    );
    let counts = q.counts(c.id()).await.unwrap();
    assert_eq!((counts.admitted, counts.queued), (3, 1));
    // Forcing starts again from the database's word: the coupons and, for the embedded queue,
    // its durable record of admissions not yet issued. Redis's queue is its own record: what
    // it queued is dropped.
    let kept = q.kind() == "embedded";
    assert!(q.sync_campaign(&c, &issued, true).await.unwrap());
    assert_eq!(q.counts(c.id()).await.unwrap().queued, i64::from(kept));
    assert_eq!(
        q.position(c.id(), "c").await.unwrap(),
        kept.then_some(5),
        "{}",
        q.kind()
    );
    for u in ["c", "d", "e"] {
        let outcome = q.admit(c.id(), u, "r", 0, NO_FLOOR).await.unwrap();
        if kept && u == "c" {
            assert_eq!(outcome, Admit::Duplicate { position: 5 });
        } else {
            assert!(
                matches!(outcome, Admit::Admitted { .. }),
                "{u}: {outcome:?}"
            );
        }
    }
    assert_eq!(
        q.admit(c.id(), "f", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::SoldOut
    );
}

/// A state older than the database (Redis restored from an earlier snapshot) admits nobody:
/// it answers `Behind` below the floor, and a sync with the database's coupons rebuilds it.
async fn refuses_a_state_behind_the_database(q: Arc<dyn Admission>) {
    let c = campaign(spec(6));
    let early = vec![("a".to_owned(), 1), ("b".to_owned(), 2)];
    q.sync_campaign(&c, &early, false).await.unwrap();
    // Since then the database issued two more; the queue never saw them.
    let issued: Vec<(String, i64)> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, u)| (u.to_string(), i as i64 + 1))
        .collect();
    let floor = Floor::of_issued(&issued);
    assert_eq!(
        q.admit(c.id(), "x", "r", 0, floor).await.unwrap(),
        Admit::Behind
    );
    assert_eq!(
        q.admit(c.id(), "c", "r", 0, floor).await.unwrap(),
        Admit::Behind,
        "a holder is not told anything from the stale state"
    );
    // Either count behind is enough.
    let by_position = Floor {
        issued: 2,
        last_position: 4,
        campaign_issued: 2,
    };
    assert_eq!(
        q.admit(c.id(), "x", "r", 0, by_position).await.unwrap(),
        Admit::Behind
    );
    assert!(
        q.sync_campaign(&c, &issued, false).await.unwrap(),
        "a sync below the database's coupons rebuilds"
    );
    assert!(!q.sync_campaign(&c, &issued, false).await.unwrap(), "once");
    assert_eq!(
        q.admit(c.id(), "c", "r", 0, floor).await.unwrap(),
        Admit::Duplicate { position: 3 }
    );
    assert_eq!(
        q.admit(c.id(), "x", "r", 0, floor).await.unwrap(),
        Admit::Admitted { position: 5 }
    );
}

async fn campaigns_are_independent(q: Arc<dyn Admission>) {
    let a = campaign(spec(1));
    let b = campaign(spec(1));
    q.sync_campaign(&a, &[], false).await.unwrap();
    q.sync_campaign(&b, &[], false).await.unwrap();
    assert_eq!(
        q.admit(a.id(), "u", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::Admitted { position: 1 }
    );
    assert_eq!(
        q.admit(b.id(), "u", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::Admitted { position: 1 }
    );
    assert_eq!(
        q.admit(a.id(), "v", "r", 0, NO_FLOOR).await.unwrap(),
        Admit::SoldOut
    );
}

async fn forgets_refused_users(q: Arc<dyn Admission>) {
    let c = campaign(spec(2));
    q.sync_campaign(&c, &[], false).await.unwrap();
    q.admit(c.id(), "u", "r", 0, NO_FLOOR).await.unwrap();
    q.forget(c.id(), &["u".to_owned()]).await.unwrap();
    assert_eq!(q.position(c.id(), "u").await.unwrap(), None);
}

async fn concurrent_admissions_never_pass_capacity(q: Arc<dyn Admission>) {
    let c = campaign(spec(50));
    q.sync_campaign(&c, &[], false).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let (q, id) = (q.clone(), c.id().to_owned());
        tasks.push(tokio::spawn(async move {
            q.admit(&id, &format!("u{}", i % 200), "r", 0, NO_FLOOR)
                .await
                .unwrap()
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        if let Admit::Admitted { position } = t.await.unwrap() {
            positions.push(position);
        }
    }
    positions.sort();
    assert_eq!(positions, (1..=50).collect::<Vec<_>>());
}

/// A remote queue lists the users it admitted (for the hosts' sold-out flag); the in-process
/// one needs no copy.
async fn lists_admitted_users(q: Arc<dyn Admission>) {
    let c = campaign(spec(2));
    q.sync_campaign(&c, &[], false).await.unwrap();
    for user in ["u1", "u2", "u3"] {
        q.admit(c.id(), user, "r", 0, NO_FLOOR).await.unwrap();
    }
    match q.admitted_users(c.id()).await.unwrap() {
        Some(users) => assert_eq!(
            users,
            std::collections::HashMap::from([("u1".to_owned(), 1), ("u2".to_owned(), 2)])
        ),
        None => assert_eq!(q.kind(), "embedded"),
    }
}
