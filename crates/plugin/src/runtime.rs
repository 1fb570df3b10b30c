//! The wasmtime side: one engine per process (pooling allocator, epoch interruption), a
//! cache of compiled components by content hash, the checks a component must pass to load,
//! and one sandboxed call.
//!
//! By default every call gets a fresh store from the pre-instantiated component: nothing a
//! plugin keeps in memory survives to the next event, and one event's failure cannot leak into
//! another. A plugin section with `reuse = N` opts into keeping an instance for up to N events
//! of its campaign and version, one at a time ([`Warm`]); the instance is dropped after any
//! failed call, and a new version or campaign file section is a new [`Plugin`] with no
//! instances, so nothing crosses campaigns or versions.
//! A call is bounded in memory ([`StoreLimits`]: growing past the limit traps), in time (the
//! engine's epoch ticks every [`TICK`]; the plugin yields to the executor at each tick, so
//! the wall-clock timeout can stop even a plugin that never returns, without holding a
//! thread), and in output (bytes passed to the host).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    UpdateDeadline,
};

use super::bindings::{
    Audience, CallCtx, CallState, Consumer, ConsumerIndices, ConsumerPre, Denied, Event,
    HandleError,
};
use super::services::Services;
use crate::budget::{BudgetExceeded, MemoryBudget};
use crate::config::PluginConfig;
use crate::files::PluginFiles;
use firstcome_bus::HandlerError;
use firstcome_core::bounded::error_text;
use firstcome_core::plugin_spec::{MAX_MEMORY_MB, PluginSpec};
use firstcome_store::{Effects, Pending, Scope};

/// How often the engine's epoch advances: the granularity of the CPU accounting and of how
/// soon a runaway plugin yields.
pub const TICK: Duration = Duration::from_millis(10);
/// Instances that can be live at once in the pooling allocator (one per event being handled,
/// plus the kept ones).
const POOL_INSTANCES: u32 = 256;
/// Kept instances (`reuse`) in the whole process: the rest of the pool stays free for calls.
const MAX_WARM: usize = POOL_INSTANCES as usize / 2;
/// Kept instances per plugin: about one per event a consumer group handles at once.
const MAX_WARM_PER_PLUGIN: usize = 8;
/// Bytes of each linear memory the pooling allocator keeps resident between instances (a Rust
/// plugin's shadow stack alone is its first 1 MiB). With `PAGEMAP_SCAN` (Linux 6.7+) only the
/// pages an instance touched are reset, by `memset`, instead of being returned to the kernel
/// and faulted in again by the next instance; a plugin that touches more pays `madvise` for
/// the rest, as before. Measured in BENCHMARKS.md ("Consumer plugins").
const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
/// The same for each table and async stack, which small plugins touch little of: scanning a
/// larger range measured slower.
const KEEP_RESIDENT_SMALL: usize = 64 << 10;
/// Elements one table may grow to (a table element is a pointer or two; the budget charges
/// them, see `budget`).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// The largest component file the host reads; the reference plugins are about 100 KiB.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;
const HANDLER_EXPORT: &str = "firstcome:plugin/handler@0.1.0";
const INIT_EXPORT: &str = "firstcome:plugin/init@0.1.0";
const PACKAGE_PREFIX: &str = "firstcome:plugin/";
const PACKAGE_VERSION: &str = "0.1.0";

/// Why a component was not loaded. The message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    /// The file's digest is not given: the error must not tell anyone what a file holds.
    #[error(
        "sha256 mismatch: the file's SHA-256 is not the {expected} its campaign gives (check it with `sha256sum`)"
    )]
    Hash { expected: String },
    #[error(
        "this is a core WebAssembly module, not a component: build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("not a WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "imports `{0}`, which this host does not offer; it offers {PACKAGE_PREFIX}*@{PACKAGE_VERSION} and WASI 0.2"
    )]
    UnknownImport(String),
    /// WASI's HTTP: a plugin gets no network. componentize-js links it unless told not to.
    #[error(
        "imports `{0}`: this host gives plugins no network, so it offers no WASI HTTP; build without it (componentize-js: --disable http fetch-event)"
    )]
    Http(String),
    #[error(
        "imports `{0}`: built against another version of the firstcome:plugin package; this host serves {PACKAGE_VERSION}"
    )]
    WrongVersion(String),
    #[error("cannot link: {0}")]
    Link(String),
    #[error(
        "does not export `{HANDLER_EXPORT}`: build it against the `consumer` world of wit/plugin.wit ({0})"
    )]
    NoHandler(String),
    #[error("init refused its settings: {0}")]
    Init(String),
}

/// A compiled, checked, pre-instantiated component.
pub struct Compiled {
    /// `sha256:{hex}` of the file: the plugin's version.
    pub version: String,
    pre: ConsumerPre<CallCtx>,
    /// Where the handler's exports are, found once: a call only loads them.
    indices: ConsumerIndices,
    init: Option<ComponentExportIndex>,
}

impl Compiled {
    /// Whether the component exports `init` (world `consumer-with-init`), so that its
    /// settings are checked at load.
    pub fn has_init(&self) -> bool {
        self.init.is_some()
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("version", &self.version)
            .field("init", &self.init.is_some())
            .finish_non_exhaustive()
    }
}

/// Per-plugin counters (per campaign, role and version), for the admin API and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    denied: AtomicU64,
    busy_us: AtomicU64,
    epochs: AtomicU64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CounterSnapshot {
    pub calls: u64,
    /// Calls that ended in a handle error the plugin returned.
    pub errors: u64,
    /// Traps, memory limit hits and output limit hits.
    pub traps: u64,
    pub timeouts: u64,
    /// Ungranted or invalid capability calls.
    pub denied: u64,
    /// Wall-clock time in calls (instantiation included), microseconds.
    pub busy_us: u64,
    /// Epoch ticks ([`TICK`]) spent running WebAssembly: the plugin's CPU time, coarsely.
    pub epochs: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            calls: get(&self.calls),
            errors: get(&self.errors),
            traps: get(&self.traps),
            timeouts: get(&self.timeouts),
            denied: get(&self.denied),
            busy_us: get(&self.busy_us),
            epochs: get(&self.epochs),
        }
    }
}

/// A component bound to one role of one campaign, with its grants, settings and limits.
#[derive(Debug)]
pub struct Plugin {
    pub scope: Scope,
    pub path: PathBuf,
    pub compiled: Arc<Compiled>,
    pub spec: Arc<PluginSpec>,
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub output_limit: usize,
    pub counters: Arc<Counters>,
    /// Events one instance may serve (`reuse`; 1: a fresh instance per event).
    pub reuse: u32,
    /// Instances kept for the next events (only with `reuse` > 1).
    warm: Mutex<Vec<Warm>>,
}

impl Plugin {
    pub fn version(&self) -> &str {
        &self.compiled.version
    }

    /// Instances kept for reuse right now.
    pub fn warm_instances(&self) -> usize {
        self.warm.lock().unwrap().len()
    }

    /// Drops the kept instances (what they remember of events whose writes were not applied
    /// must not be seen by the retries of those events).
    pub fn drop_warm(&self) {
        self.warm.lock().unwrap().clear();
    }
}

/// An instance kept between events, with the store it lives in.
struct Warm {
    store: Store<CallCtx>,
    consumer: Consumer,
    /// Events it has served.
    served: u32,
    _slot: WarmSlot,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

/// One of the process's [`MAX_WARM`] places for a kept instance, given back when dropped.
struct WarmSlot;

static WARM: AtomicU64 = AtomicU64::new(0);

impl WarmSlot {
    fn take() -> Option<Self> {
        let taken = WARM.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_WARM as u64).then_some(n + 1)
        });
        taken.ok().map(|_| Self)
    }
}

impl Drop for WarmSlot {
    fn drop(&mut self) {
        WARM.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("plugin returned a retryable error: {0}")]
    Retryable(String),
    #[error("plugin returned a permanent error: {0}")]
    Permanent(String),
    #[error("{0}")]
    Denied(Denied),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin hit its memory limit of {limit_mb} MiB: {message}")]
    Memory { limit_mb: usize, message: String },
    #[error("plugin did not finish within {0:?}")]
    Timeout(Duration),
    #[error("could not start the plugin: {0}")]
    Start(String),
}

impl CallError {
    /// What the bus does with the event: a plugin's permanent error and a refused capability
    /// call (the same event would be refused again) go straight to the dead-letter topic;
    /// everything else is retried first.
    pub fn to_handler_error(&self, plugin: &str) -> HandlerError {
        let message = error_text(format!("{plugin}: {self}"));
        match self {
            Self::Permanent(_) | Self::Denied(Denied::Ungranted(_) | Denied::Invalid(_)) => {
                HandlerError::Permanent(message)
            }
            _ => HandlerError::Retryable(message),
        }
    }
}

/// The process's engine: one per process, as wasmtime intends, so that every host in a test
/// process shares one pooling allocator and one epoch ticker.
fn shared_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 2)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 2)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size((MAX_MEMORY_MB as usize) << 20)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_SMALL)
            .async_stack_keep_resident(KEEP_RESIDENT_SMALL)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // The pool reserves address space up front; where that is refused (a tight
        // `ulimit -v`), fall back to allocating on demand.
        let engine = Engine::new(&pooled).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "pooling allocator unavailable; allocating on demand");
            Engine::new(&config).expect("the default wasmtime configuration is valid")
        });
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawning the epoch ticker");
        engine
    })
}

/// Loads, checks and runs components.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallCtx>,
    cache: Mutex<HashMap<String, Arc<Compiled>>>,
    /// Compilations under way at most (one per core): many campaigns applied at once share the
    /// cores in turn rather than each taking longer than its time limit.
    compiling: tokio::sync::Semaphore,
    /// What every instance's memory is charged to.
    budget: Arc<MemoryBudget>,
    pub limits: PluginConfig,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Compiled versions the cache keeps before it drops those no plugin holds.
const CACHE_KEEP: usize = 32;

/// `sha256:{hex}` of some bytes.
pub fn version_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Runtime {
    pub fn new(limits: PluginConfig) -> anyhow::Result<Self> {
        let engine = shared_engine().clone();
        let mut linker = Linker::new(&engine);
        super::bindings::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Self {
            engine,
            linker,
            cache: Mutex::new(HashMap::new()),
            compiling: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            budget: MemoryBudget::new((limits.memory_budget_mb as usize) << 20),
            limits,
        })
    }

    /// Reads a component file, checking its hash when `expected_sha256` is given.
    pub fn read(path: &Path, expected_sha256: Option<&str>) -> Result<Vec<u8>, LoadError> {
        Self::read_within(path, expected_sha256, None)
    }

    /// [`Self::read`], and when `files` is given, the file opened must be one `files` admits
    /// (checked on the open file itself: a link swapped in after the path was resolved does
    /// not lead the read elsewhere).
    pub fn read_within(
        path: &Path,
        expected_sha256: Option<&str>,
        files: Option<&PluginFiles>,
    ) -> Result<Vec<u8>, LoadError> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let refuse = |reason: String| LoadError::File {
            path: path.display().to_string(),
            reason,
        };
        // Opened without blocking (a FIFO swapped in must not hang the load), then checked:
        // only a regular file of sane size, so that a device (`/dev/zero`) or a pipe is
        // refused, not read into memory.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| refuse(e.to_string()))?;
        if let Some(files) = files {
            let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .map_err(|e| refuse(e.to_string()))?;
            files.admits(path, &real).map_err(refuse)?;
        }
        let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
        if !meta.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        if meta.len() > MAX_COMPONENT_BYTES {
            return Err(refuse(format!(
                "{} bytes; a component may have at most {MAX_COMPONENT_BYTES}",
                meta.len()
            )));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_COMPONENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| refuse(e.to_string()))?;
        if bytes.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(refuse(format!(
                "grew past {MAX_COMPONENT_BYTES} bytes while read"
            )));
        }
        if let Some(expected) = expected_sha256 {
            let actual = hex::encode(Sha256::digest(&bytes));
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(LoadError::Hash {
                    expected: expected.to_ascii_lowercase(),
                });
            }
        }
        Ok(bytes)
    }

    /// Compiles and checks a component, or returns the cached one with the same content.
    /// Compiling takes CPU time: call it from a blocking thread.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<Compiled>, LoadError> {
        let version = version_of(bytes);
        if let Some(hit) = self.cache.lock().unwrap().get(&version) {
            return Ok(hit.clone());
        }
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(LoadError::CoreModule);
        }
        // Not WebAssembly at all: the parser's message would quote the file's first bytes.
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::Invalid(
                "the file does not start with WebAssembly's magic number".into(),
            ));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        for (name, _) in component.component_type().imports(&self.engine) {
            if let Some(rest) = name.strip_prefix(PACKAGE_PREFIX) {
                if rest.rsplit_once('@').map(|(_, v)| v) != Some(PACKAGE_VERSION) {
                    return Err(LoadError::WrongVersion(name.to_owned()));
                }
            } else if name.starts_with("wasi:http/") {
                return Err(LoadError::Http(name.to_owned()));
            } else if !name.starts_with("wasi:") {
                return Err(LoadError::UnknownImport(name.to_owned()));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let indices =
            ConsumerIndices::new(&pre).map_err(|e| LoadError::NoHandler(format!("{e:#}")))?;
        let pre = ConsumerPre::new(pre).map_err(|e| LoadError::NoHandler(format!("{e:#}")))?;
        let init = component
            .get_export_index(None, INIT_EXPORT)
            .and_then(|i| component.get_export_index(Some(&i), "init"));
        let compiled = Arc::new(Compiled {
            version: version.clone(),
            pre,
            indices,
            init,
        });
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_KEEP {
            // Versions nothing runs any more (a swapped plugin, a removed campaign) go; the
            // ones in force stay, however many.
            cache.retain(|_, c| Arc::strong_count(c) > 1);
        }
        cache.insert(version, compiled.clone());
        Ok(compiled)
    }

    /// Reads (checking the hash) and compiles a component file on a blocking thread; an
    /// unchanged file costs a read, a hash and a cache look-up.
    pub async fn fetch(
        self: &Arc<Self>,
        path: &Path,
        sha256: Option<&str>,
        files: Option<&PluginFiles>,
    ) -> Result<Arc<Compiled>, LoadError> {
        let (runtime, path, sha256) = (self.clone(), path.to_owned(), sha256.map(str::to_owned));
        let files = files.cloned();
        let limit = Duration::from_millis(self.limits.compile_timeout_ms);
        // The time limit counts from the turn of this compilation, not from the wait for it.
        let _turn = self
            .compiling
            .acquire()
            .await
            .map_err(|e| LoadError::Invalid(format!("loading stopped: {e}")))?;
        let compiling = tokio::task::spawn_blocking(move || {
            let bytes = Runtime::read_within(&path, sha256.as_deref(), files.as_ref())?;
            runtime.compile(&bytes)
        });
        // On time-out the compilation runs on to its end on its thread (it cannot be stopped
        // part-way); what it makes is cached, so trying again soon costs no second one.
        match tokio::time::timeout(limit, compiling).await {
            Ok(done) => done.map_err(|e| LoadError::Invalid(format!("loading stopped: {e}")))?,
            Err(_) => Err(LoadError::Invalid(format!(
                "compiling took longer than {} ms (plugins.compile_timeout_ms)",
                limit.as_millis()
            ))),
        }
    }

    /// Binds a compiled component and runs its `init`: what a version must pass before it
    /// may serve.
    pub async fn start(
        &self,
        scope: Scope,
        path: PathBuf,
        compiled: Arc<Compiled>,
        spec: PluginSpec,
        services: Arc<dyn Services>,
    ) -> Result<Plugin, LoadError> {
        let plugin = self.bind(scope, path, compiled, spec);
        self.check_init(&plugin, services).await?;
        Ok(plugin)
    }

    /// Binds a compiled component to a campaign's role with its section's limits.
    pub fn bind(
        &self,
        scope: Scope,
        path: PathBuf,
        compiled: Arc<Compiled>,
        spec: PluginSpec,
    ) -> Plugin {
        let timeout = Duration::from_millis(spec.timeout_ms.unwrap_or(self.limits.timeout_ms));
        let memory_mb = spec
            .memory_mb
            .unwrap_or(self.limits.memory_mb)
            .min(MAX_MEMORY_MB);
        Plugin {
            scope,
            path,
            compiled,
            timeout,
            memory_bytes: (memory_mb as usize) << 20,
            output_limit: self.limits.max_output_bytes,
            counters: Arc::new(Counters::default()),
            reuse: spec.reuse.unwrap_or(1),
            warm: Mutex::new(Vec::new()),
            spec: Arc::new(spec),
        }
    }

    fn store(&self, plugin: &Plugin, call: CallState) -> Store<CallCtx> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(plugin.memory_bytes)
            .table_elements(MAX_TABLE_ELEMENTS)
            .trap_on_grow_failure(true)
            .build();
        let limits = crate::budget::Limiter::new(limits, self.budget.clone());
        let mut store = Store::new(&self.engine, CallCtx::new(limits, call));
        store.limiter(|ctx| &mut ctx.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            ctx.data_mut().call.epochs += 1;
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    fn call_state(
        &self,
        plugin: &Plugin,
        event: Option<&Event>,
        event_id: &str,
        services: Arc<dyn Services>,
        pending: Option<Arc<Pending>>,
    ) -> CallState {
        CallState {
            scope: plugin.scope.clone(),
            event_id: event_id.to_owned(),
            version: plugin.compiled.version.clone(),
            spec: plugin.spec.clone(),
            services,
            effects: Effects::default(),
            output_left: plugin.output_limit,
            output_limit: plugin.output_limit,
            epochs: 0,
            log_left: super::bindings::limits::LOG_PER_CALL,
            log_dropped: 0,
            pending,
            audience: event.map(Audience::of).unwrap_or_default(),
            sends_left: self.limits.max_sends_per_event,
        }
    }

    /// Runs the component's `init` (if it exports one) on a fresh instance: the check a new
    /// version must pass before it replaces the old one.
    pub async fn check_init(
        &self,
        plugin: &Plugin,
        services: Arc<dyn Services>,
    ) -> Result<(), LoadError> {
        let mut store = self.store(plugin, self.call_state(plugin, None, "", services, None));
        let run = async {
            let instance = plugin
                .compiled
                .pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await?;
            run_init(&mut store, &instance, plugin).await
        };
        match tokio::time::timeout(plugin.timeout, run).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(refused))) => Err(LoadError::Init(error_text(refused))),
            Ok(Err(trap)) => Err(LoadError::Init(format!("trapped: {trap:#}"))),
            Err(_) => Err(LoadError::Init(format!(
                "did not finish within {:?}",
                plugin.timeout
            ))),
        }
    }

    /// Handles one event in a fresh instance, or in a kept one when the plugin's `reuse`
    /// allows. On success, returns what the plugin wrote (to be applied by the caller); on
    /// failure, nothing it wrote survives, and neither does the instance.
    pub async fn call(
        &self,
        plugin: &Plugin,
        event_id: &str,
        event: &Event,
        services: Arc<dyn Services>,
    ) -> Result<Effects, CallError> {
        self.call_after(plugin, event_id, event, services, None)
            .await
    }

    /// [`Self::call`] for an event of a batch whose earlier events wrote `pending` to the
    /// plugin's scope, not yet committed: the plugin's kv reads and counters see it.
    pub async fn call_after(
        &self,
        plugin: &Plugin,
        event_id: &str,
        event: &Event,
        services: Arc<dyn Services>,
        pending: Option<Arc<Pending>>,
    ) -> Result<Effects, CallError> {
        let started = Instant::now();
        let call = self.call_state(plugin, Some(event), event_id, services, pending);
        let kept = if plugin.reuse > 1 {
            plugin.warm.lock().unwrap().pop()
        } else {
            None
        };
        let (mut store, kept, served, slot) = match kept {
            Some(warm) => {
                let Warm {
                    mut store,
                    consumer,
                    served,
                    _slot: slot,
                } = warm;
                store.data_mut().call = call;
                store.set_epoch_deadline(1);
                (store, Some(consumer), served, Some(slot))
            }
            None => (self.store(plugin, call), None, 0, None),
        };
        let run = async {
            let consumer = match kept {
                Some(consumer) => consumer,
                None => {
                    let instance = plugin
                        .compiled
                        .pre
                        .instance_pre()
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| CallError::Start(error_text(format!("{e:#}"))))?;
                    let consumer = plugin
                        .compiled
                        .indices
                        .load(&mut store, &instance)
                        .map_err(|e| CallError::Start(error_text(format!("{e:#}"))))?;
                    run_init(&mut store, &instance, plugin)
                        .await
                        .map_err(|e| classify(e, plugin))?
                        .map_err(|e| {
                            CallError::Retryable(error_text(format!(
                                "init refused its settings: {e}"
                            )))
                        })?;
                    consumer
                }
            };
            consumer
                .firstcome_plugin_handler()
                .call_handle(&mut store, event)
                .await
                .map_err(|e| classify(e, plugin))?
                .map_err(|e| match e {
                    HandleError::Retryable(m) => CallError::Retryable(error_text(m)),
                    HandleError::Permanent(m) => CallError::Permanent(error_text(m)),
                })?;
            Ok(consumer)
        };
        let result = match tokio::time::timeout(plugin.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(plugin.timeout)),
        };
        let c = &plugin.counters;
        c.calls.fetch_add(1, Ordering::Relaxed);
        c.busy_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        c.epochs
            .fetch_add(store.data().call.epochs, Ordering::Relaxed);
        let dropped = store.data().call.log_dropped;
        if dropped > 0 {
            tracing::warn!(target: "plugin", campaign = %plugin.scope.campaign_id,
                role = %plugin.scope.role, version = %plugin.version(), %event_id, dropped,
                "plugin log lines dropped: a call may log {} bytes",
                super::bindings::limits::LOG_PER_CALL);
        }
        let counter = match &result {
            Ok(_) => None,
            Err(CallError::Retryable(_) | CallError::Permanent(_)) => Some(&c.errors),
            Err(CallError::Denied(Denied::Ungranted(_) | Denied::Invalid(_))) => Some(&c.denied),
            Err(CallError::Timeout(_)) => Some(&c.timeouts),
            Err(_) => Some(&c.traps),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let consumer = result?;
        let effects = std::mem::take(&mut store.data_mut().call.effects);
        // A kept instance must not hold the batch's pending writes (nor keep them shared).
        store.data_mut().call.pending = None;
        // Kept for the next event only after a clean call, while it has events left to serve
        // and the process has room; a failed call drops the store above, and with it the
        // instance.
        let served = served + 1;
        if served < plugin.reuse {
            let slot = slot.or_else(WarmSlot::take);
            let mut warm = plugin.warm.lock().unwrap();
            // Kept only while the process's plugin memory allows (see `budget`): a store
            // dropped here gives its memory back.
            if let Some(slot) = slot
                && warm.len() < MAX_WARM_PER_PLUGIN
                && self.budget.may_keep()
            {
                warm.push(Warm {
                    store,
                    consumer,
                    served,
                    _slot: slot,
                });
            }
        }
        Ok(effects)
    }
}

/// Calls the component's `init` with the plugin's settings, if it exports one.
async fn run_init(
    store: &mut Store<CallCtx>,
    instance: &wasmtime::component::Instance,
    plugin: &Plugin,
) -> wasmtime::Result<Result<(), String>> {
    let Some(init) = &plugin.compiled.init else {
        return Ok(Ok(()));
    };
    let settings: Vec<(String, String)> = plugin.spec.settings.clone().into_iter().collect();
    let func = instance
        .get_typed_func::<(Vec<(String, String)>,), (Result<(), String>,)>(&mut *store, init)?;
    let (result,) = func.call_async(&mut *store, (settings,)).await?;
    Ok(result)
}

/// Sorts an error out of wasmtime into what happened.
fn classify(error: wasmtime::Error, plugin: &Plugin) -> CallError {
    if let Some(denied) = error.downcast_ref::<Denied>() {
        return CallError::Denied(denied.clone());
    }
    if let Some(budget) = error.downcast_ref::<BudgetExceeded>() {
        return CallError::Trap(budget.to_string());
    }
    let message = error_text(format!("{error:#}"));
    if message.contains("forcing trap when growing memory") {
        return CallError::Memory {
            limit_mb: plugin.memory_bytes >> 20,
            message,
        };
    }
    CallError::Trap(message)
}
