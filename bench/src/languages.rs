//! The stats plugin's counting logic as a component built from Rust (`plugins/stats`), Python
//! (componentize-py) and JavaScript (componentize-js), `bench/plugins/{python,js}/stats`: the
//! component's size, its compile time (what a host's first load of it costs), its first call,
//! and the per-event cost with a fresh instance per event and with `reuse = 128`. Every run
//! must produce the native logic's counters.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use firstcome_plugin::Runtime;
use firstcome_plugin::recording::Recording;
use firstcome_plugin::services::Services;

use super::plugin::{bind_stats, component, events, native};

/// Seconds to compile `path` in a runtime of its own (nothing cached), and the milliseconds of
/// the first call after it (instantiation, the interpreter's start, one event).
async fn first_load(
    path: &Path,
    event: &(String, firstcome_plugin::Event),
) -> anyhow::Result<(f64, f64)> {
    let runtime = Runtime::new(Default::default())?;
    let bytes = Runtime::read(path, None)?;
    let started = Instant::now();
    let compiled = runtime.compile(&bytes)?;
    let compile = started.elapsed().as_secs_f64();
    let plugin = bind_stats(&runtime, path, compiled, None);
    let services: Arc<dyn Services> = Arc::new(Recording::default());
    let started = Instant::now();
    runtime.call(&plugin, &event.0, &event.1, services).await?;
    Ok((compile, started.elapsed().as_secs_f64() * 1000.0))
}

/// Rust, Python and JavaScript builds of the same logic over `n` events each way.
pub async fn phase(rust: &Path, python: &Path, js: &Path, n: usize) -> anyhow::Result<()> {
    let events = events(n)?;
    let (native_counts, native_rate) = native(n);
    println!(
        "| language | size MB | compile s | first call ms | fresh events/s | fresh p50 / p99 µs | reuse events/s | reuse p50 / p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (language, path) in [("Rust", rust), ("Python", python), ("JavaScript", js)] {
        let size = std::fs::metadata(path)?.len() as f64 / 1e6;
        let (compile, first) = first_load(path, &events[0]).await?;
        let runtime = Arc::new(Runtime::new(Default::default())?);
        let mut row = format!("| {language} | {size:.1} | {compile:.2} | {first:.1} |");
        for reuse in [None, Some(128)] {
            let (rate, p50, p99, counts) =
                component(&runtime, path, reuse, &events, n / 10).await?;
            anyhow::ensure!(
                counts.0 == native_counts.0,
                "{language} (reuse {reuse:?}) disagrees with the native logic"
            );
            row.push_str(&format!(" {rate:.0} | {p50:.1} / {p99:.1} |"));
        }
        println!("{row}");
    }
    println!("\nnative: {native_rate:.0} events/s over {n} events");
    Ok(())
}
