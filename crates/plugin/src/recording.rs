//! `firstcome plugin test`: runs a component on one event in the same sandbox as the host,
//! with capabilities that record (and print) each call instead of reaching the world.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use super::runtime::{CallError, Runtime};
use super::services::{PushMessage, SendError, Services};
use crate::config::PluginConfig;
use firstcome_core::plugin_spec::{Capability, PluginSpec};
use firstcome_store::{Effects, Scope};

/// Capabilities that keep what they are asked to do.
#[derive(Debug, Default)]
pub struct Recording {
    /// One line per capability call, in order.
    pub calls: Mutex<Vec<String>>,
    /// Stored kv values and counters the plugin can read.
    pub kv: Mutex<BTreeMap<String, Vec<u8>>>,
    pub counters: Mutex<BTreeMap<String, i64>>,
    /// Make every email and push fail this way (to see how the plugin reacts).
    pub fail_sends: Option<SendError>,
}

impl Recording {
    fn record(&self, line: String) {
        println!("  {line}");
        self.calls.lock().unwrap().push(line);
    }

    fn send_result(&self) -> Result<(), SendError> {
        self.fail_sends.clone().map_or(Ok(()), Err)
    }
}

fn shown(r: &Result<(), SendError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("error ({e})"),
    }
}

#[async_trait]
impl Services for Recording {
    async fn kv_get(&self, _scope: &Scope, key: &str) -> Result<Option<Vec<u8>>, String> {
        let value = self.kv.lock().unwrap().get(key).cloned();
        self.record(format!(
            "kv.get {key:?} -> {}",
            value.as_ref().map_or("none".into(), |v| format!(
                "{:?}",
                String::from_utf8_lossy(v)
            ))
        ));
        Ok(value)
    }

    async fn kv_counter(&self, _scope: &Scope, key: &str) -> Result<i64, String> {
        Ok(self.counters.lock().unwrap().get(key).copied().unwrap_or(0))
    }

    async fn send_email(
        &self,
        _: &Scope,
        _: &str,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), SendError> {
        let result = self.send_result();
        self.record(format!(
            "email.send to={to:?} subject={subject:?} body={body:?} -> {}",
            shown(&result)
        ));
        result
    }

    async fn send_push(&self, _: &Scope, _: &str, m: &PushMessage) -> Result<(), SendError> {
        let result = self.send_result();
        self.record(format!(
            "push.send token={:?} title={:?} body={:?} data={:?} -> {}",
            m.token,
            m.title,
            m.body,
            m.data,
            shown(&result)
        ));
        result
    }

    fn logged(&self, _scope: &Scope, level: &str, message: &str) {
        self.record(format!("log.{level} {message:?}"));
    }
}

/// What `plugin test` was asked to do.
#[derive(Debug, Clone)]
pub struct TestRun {
    pub settings: BTreeMap<String, String>,
    /// `None`: every capability.
    pub grants: Option<BTreeSet<Capability>>,
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u32>,
    pub capacity: i64,
}

/// How the run ended.
#[derive(Debug)]
pub struct TestOutcome {
    pub result: Result<Effects, CallError>,
    pub calls: Vec<String>,
    pub version: String,
}

/// Loads `wasm`, checks it as the host would, and handles `event_json` (a bus envelope, as
/// `firstcome dlt show` prints it) once. Load errors are returned as text.
pub async fn run(wasm: &Path, event_json: &str, run: TestRun) -> anyhow::Result<TestOutcome> {
    let runtime = Arc::new(Runtime::new(PluginConfig::default())?);
    let compiled = runtime.fetch(wasm, None, None).await?;
    let version = compiled.version.clone();
    println!("plugin {} ({version})", wasm.display());
    let envelope = parse_event(event_json)?;
    let scope = Scope {
        campaign_id: envelope.campaign_id.clone(),
        role: "test".into(),
    };
    let spec = PluginSpec {
        path: wasm.to_owned(),
        sha256: None,
        grants: run
            .grants
            .unwrap_or_else(|| Capability::ALL.into_iter().collect()),
        recipients: Default::default(),
        settings: run.settings,
        timeout_ms: run.timeout_ms,
        memory_mb: run.memory_mb,
        // One event: nothing to reuse an instance for.
        reuse: None,
    };
    let services = Arc::new(Recording::default());
    let has_init = compiled.has_init();
    println!("init:");
    let plugin = runtime
        .start(scope, wasm.to_owned(), compiled, spec, services.clone())
        .await?;
    if has_init {
        println!("  ok");
    } else {
        // A component built for the `consumer` world: its settings are not checked at load.
        println!("  none exported (world `consumer`): settings are not checked at load");
    }
    let event = super::host::wit_event(envelope.clone(), run.capacity)
        .map_err(|e| anyhow::anyhow!("the event cannot be handed to a plugin: {e}"))?;
    // As the host would hand it over: personal fields only under their grants.
    let event = super::host::visible_to(event, &plugin.spec);
    println!("handle {}:", envelope.event_id);
    let started = Instant::now();
    let result = runtime
        .call(&plugin, &envelope.event_id, &event, services.clone())
        .await;
    let elapsed = started.elapsed();
    match &result {
        Ok(effects) => {
            println!("result: ok in {elapsed:.2?}");
            for (k, v) in &effects.kv {
                match v {
                    Some(v) => println!("  kv.set {k:?} = {:?}", String::from_utf8_lossy(v)),
                    None => println!("  kv.delete {k:?}"),
                }
            }
            for (k, d) in &effects.counters {
                println!("  kv.increment {k:?} {d:+}");
            }
            for (k, d) in &effects.stats {
                println!("  stats.increment {k:?} {d:+}");
            }
            if effects.publish_stats {
                println!("  stats.publish");
            }
            for h in &effects.history {
                println!(
                    "  history.record event={} user={} coupon={} code={}",
                    h.event_id, h.user_id, h.coupon_id, h.coupon_code
                );
            }
        }
        Err(e) => {
            let verdict = match e.to_handler_error("plugin") {
                firstcome_bus::HandlerError::Retryable(_) => "retried, then dead-lettered",
                firstcome_bus::HandlerError::Permanent(_) => "dead-lettered at once",
                firstcome_bus::HandlerError::NotReady(_) => "tried again until it runs",
            };
            println!(
                "result: failed in {elapsed:.2?}: {e}\n  (in the host this event would be {verdict})"
            );
        }
    }
    let calls = services.calls.lock().unwrap().clone();
    Ok(TestOutcome {
        result,
        calls,
        version,
    })
}

/// An envelope, or a bus message (as `firstcome dlt show` prints it) carrying one.
fn parse_event(text: &str) -> anyhow::Result<firstcome_core::event::Envelope<serde_json::Value>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("the event is not JSON: {e}"))?;
    let value = match value.get("payload") {
        Some(serde_json::Value::String(inner)) => serde_json::from_str(inner)
            .map_err(|e| anyhow::anyhow!("the message's payload is not JSON: {e}"))?,
        _ => value,
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        anyhow::anyhow!(
            "the event is not a firstcome event envelope (event_id, event_type, schema_version, \
             campaign_id, occurred_at as RFC 3339, payload): {e}"
        )
    })
}

/// Loads every plugin a campaign names as the host would (read, hash, compile, `init`),
/// returning each role's version.
pub async fn check_plugins(
    campaign: &firstcome_core::campaign::Campaign,
    files: &crate::PluginFiles,
) -> Result<Vec<(String, String)>, String> {
    let runtime = Arc::new(Runtime::new(PluginConfig::default()).map_err(|e| e.to_string())?);
    let mut versions = Vec::new();
    for (role, spec) in &campaign.spec().plugins {
        let path = files
            .resolve(&spec.path)
            .map_err(|e| format!("plugins.{role}: {e}"))?;
        let fail = |e: &dyn std::fmt::Display| format!("plugins.{role} ({}): {e}", path.display());
        let compiled = runtime
            .fetch(&path, spec.sha256.as_deref(), Some(files))
            .await
            .map_err(|e| fail(&e))?;
        let scope = Scope {
            campaign_id: campaign.id().to_owned(),
            role: role.clone(),
        };
        let plugin = runtime
            .start(
                scope,
                path.clone(),
                compiled,
                spec.clone(),
                Arc::new(Recording::default()),
            )
            .await
            .map_err(|e| fail(&e))?;
        versions.push((role.clone(), plugin.version().to_owned()));
    }
    Ok(versions)
}
