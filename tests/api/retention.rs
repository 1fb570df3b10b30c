//! Retention: what is kept only for a while is purged after its time, what must stay (recent
//! marks, dead letters, a running campaign's plugin state) stays, on every backend.

use std::collections::BTreeMap;

use firstcome_core::event::Message;
use firstcome_platform::retention::{RetentionConfig, sweep};
use firstcome_store::{AuditEntry, AuditFilter, Effects, Scope};

use crate::helpers::{Backend, Backends, spec, unique};
use crate::on_all_backends;

const DAY_MS: i64 = 86_400_000;

fn message(id: &str) -> Message {
    Message {
        event_id: id.to_owned(),
        key: "k".into(),
        payload: "{}".into(),
        headers: BTreeMap::new(),
    }
}

async fn old_rows_go_and_the_rest_stays(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let store = &backends.store;
    let now = firstcome_core::clock::now_ms();
    let (old, recent) = (now - 20 * DAY_MS, now - DAY_MS);
    let group = unique("group");
    store
        .mark_processed(&group, &["old-event"], old)
        .await
        .unwrap();
    store
        .mark_processed(&group, &["recent-event"], recent)
        .await
        .unwrap();
    // A campaign removed long ago and one running, each with plugin state.
    let (gone, running) = (unique("gone"), unique("running"));
    for id in [&gone, &running] {
        let campaign = firstcome_core::campaign::Campaign::new(id, spec(3)).unwrap();
        store.upsert_campaign(&campaign).await.unwrap();
        let mut effects = Effects::default();
        effects.kv.insert("k".into(), Some(b"v".to_vec()));
        effects.counters.insert("n".into(), 1);
        let scope = Scope {
            campaign_id: id.clone(),
            role: "r".into(),
        };
        store
            .commit_effects(&group, &unique("e"), &scope, &effects, now)
            .await
            .unwrap();
    }
    store.deactivate_campaign(&gone).await.unwrap();
    let backdate = store
        .dialect()
        .sql("UPDATE campaigns SET updated_at = ? WHERE id = ?")
        .into_owned();
    sqlx::query(&backdate)
        .bind(now - 40 * DAY_MS)
        .bind(&gone)
        .execute(store.pool())
        .await
        .unwrap();
    // The audit log, and the embedded event log with a dead letter older than the log's
    // retention.
    store
        .record_audit(&AuditEntry {
            at_ms: now - 400 * DAY_MS,
            actor: "file".into(),
            action: "campaign.file".into(),
            target: gone.clone(),
            ..AuditEntry::default()
        })
        .await
        .unwrap();
    let topic = unique("topic");
    let dlt = format!("{topic}.DLT");
    store
        .append_log(&topic, &[message("old-published")], old)
        .await
        .unwrap();
    store
        .append_log(&dlt, &[message("old-dead-letter")], old)
        .await
        .unwrap();

    sweep(store, &RetentionConfig::default(), now).await;
    store.purge_log(now - 7 * DAY_MS).await.unwrap();

    let marked = store
        .processed_among(&group, &["old-event", "recent-event"])
        .await
        .unwrap();
    assert_eq!(
        marked,
        ["recent-event".to_owned()].into(),
        "marks older than 14 days go"
    );
    let kv = |id: &String| {
        let scope = Scope {
            campaign_id: id.clone(),
            role: "r".into(),
        };
        async move {
            (
                store.kv_get(&scope, "k").await.unwrap(),
                store.kv_counter(&scope, "n").await.unwrap(),
            )
        }
    };
    assert_eq!(kv(&gone).await, (None, 0), "a campaign removed 40 days ago");
    assert_eq!(
        kv(&running).await,
        (Some(b"v".to_vec()), 1),
        "a running campaign"
    );
    let audit = store
        .audit_page(
            &AuditFilter {
                target: Some(gone.clone()),
                ..AuditFilter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(audit.is_empty(), "audit entries older than a year go");
    assert!(store.read_log(&topic, 1, 10).await.unwrap().is_empty());
    assert_eq!(
        store.read_log(&dlt, 1, 10).await.unwrap().len(),
        1,
        "a dead letter stays until replayed or discarded"
    );
}

on_all_backends!(old_rows, old_rows_go_and_the_rest_stays);
