//! Recording changes in the audit log ([`firstcome_store::AuditEntry`]): who made one, what
//! it was, and the SHA-256 of the document before and after. A change is recorded after it
//! took effect; a record that cannot be written is logged and counted
//! (`firstcome_audit_failures_total`), since the change itself cannot be taken back.

use sha2::{Digest, Sha256};

use firstcome_store::{AuditEntry, Store};

/// Who changed something from outside the admin API.
pub const FILE_ACTOR: &str = "file";
pub const CLI_ACTOR: &str = "cli";

/// The hex SHA-256 of a document.
pub fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// One change to record: `before`/`after` are the documents (digested here), `None` where
/// there was none.
#[derive(Debug)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
    pub detail: Option<String>,
}

/// `plugins: role sha256:…, …` of the plugins campaign `id` runs now (`no plugins` when it
/// runs none), an audit entry's detail.
pub fn plugins_in_force(platform: &crate::Platform, id: &str) -> String {
    let versions = platform
        .campaign(id)
        .map(|c| platform.plugin_versions(&c))
        .unwrap_or_default();
    if versions.is_empty() {
        return "no plugins".into();
    }
    let listed: Vec<String> = versions
        .iter()
        .map(|(role, version)| format!("{role} {version}"))
        .collect();
    format!("plugins: {}", listed.join(", "))
}

/// Records `change` in `store`'s audit log.
pub async fn record(store: &Store, change: Change<'_>) {
    let entry = AuditEntry {
        id: 0,
        at_ms: 0,
        actor: change.actor.to_owned(),
        action: change.action.to_owned(),
        target: change.target.to_owned(),
        before_sha256: change.before.map(digest),
        after_sha256: change.after.map(digest),
        detail: change.detail,
    };
    if let Err(e) = store.record_audit(&entry).await {
        metrics::counter!("firstcome_audit_failures_total").increment(1);
        tracing::error!(actor = %entry.actor, action = %entry.action, target = %entry.target,
            error = %e, "cannot record the change in the audit log");
    }
}
