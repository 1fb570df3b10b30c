//! One clock for every host of a deployment. Campaign windows, announcements and consumer
//! group leases are judged by [`firstcome_core::clock::now_ms`]; here it is pointed at the
//! shared backend's clock — Redis's `TIME` when admission is on Redis (its queue judges the
//! windows), else the database server's — read at start-up and every [`RESYNC`] after, and
//! carried forward on the process's monotonic clock in between. A host whose wall clock is off
//! then admits, closes and takes leases at the same moments as the others; how far off it is
//! shows in readiness, in the metric `firstcome_clock_skew_ms` and in a warning beyond
//! [`SKEW_WARNING_MS`]. With SQLite and the embedded queue there is one host, on its own clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use firstcome_admission::Admission;
use firstcome_store::Store;

/// How often the shared clock is read again: a monotonic clock drifts by parts per million.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Readings taken each time; the one with the quickest round trip is kept.
const READINGS: usize = 3;

/// A reading whose round trip took longer than this is not trusted once the clock is followed
/// (it could be off by half of it).
const MAX_ROUND_TRIP: Duration = Duration::from_millis(100);

/// A host whose wall clock is further than this from the shared clock is warned about.
pub const SKEW_WARNING_MS: i64 = 1_000;

/// What the last reading of the shared clock found.
#[derive(Debug, Default)]
pub struct ClockState {
    /// `redis` or `database`, once read; `None` while this host is on its own clock.
    source: Mutex<Option<&'static str>>,
    /// This host's wall clock minus the shared clock, in ms, at the last reading.
    skew_ms: AtomicI64,
}

/// The shared clock as readiness reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockReading {
    /// `redis`, `database`, or `host` (this host's own clock: SQLite and the embedded queue).
    pub source: &'static str,
    /// This host's wall clock minus the shared clock, in ms (0 on the host's own clock).
    pub skew_ms: i64,
}

impl ClockState {
    pub fn reading(&self) -> ClockReading {
        ClockReading {
            source: self.source.lock().unwrap().unwrap_or("host"),
            skew_ms: self.skew_ms.load(Ordering::Relaxed),
        }
    }

    /// Reads the shared clock once and follows it. Fails with the source's error, leaving the
    /// clock as it was (carried forward from the last reading).
    pub async fn sync(&self, admission: &dyn Admission, store: &Store) -> Result<(), String> {
        // The reading is taken as of the middle of its round trip, so it is off by up to half
        // of it: the quickest of a few readings is kept, and a slow one (the source busy
        // behind other work) changes nothing once the clock is followed.
        let mut best: Option<(&'static str, i64, Instant, Duration)> = None;
        for _ in 0..READINGS {
            let started = Instant::now();
            let (source, shared) = match admission.clock_ms().await.map_err(|e| e.to_string())? {
                Some(ms) => ("redis", ms),
                None => match store.clock_ms().await.map_err(|e| e.to_string())? {
                    Some(ms) => ("database", ms),
                    None => return Ok(()),
                },
            };
            let round_trip = started.elapsed();
            if best.is_none_or(|(_, _, _, quickest)| round_trip < quickest) {
                best = Some((source, shared, started, round_trip));
            }
        }
        let Some((source, shared, started, round_trip)) = best else {
            return Ok(());
        };
        if round_trip > MAX_ROUND_TRIP && self.source.lock().unwrap().is_some() {
            tracing::debug!(
                ?round_trip,
                "the shared clock answered slowly; reading skipped"
            );
            return Ok(());
        }
        let skew = firstcome_core::clock::follow(shared, started + round_trip / 2);
        *self.source.lock().unwrap() = Some(source);
        let before = self.skew_ms.swap(skew, Ordering::Relaxed);
        metrics::gauge!("firstcome_clock_skew_ms").set(skew as f64);
        if skew.abs() > SKEW_WARNING_MS && before.abs() <= SKEW_WARNING_MS {
            tracing::warn!(
                skew_ms = skew,
                source,
                "this host's clock is off from the shared clock; windows and leases follow the \
                 shared one, but fix the host's time (NTP)"
            );
        }
        Ok(())
    }

    /// Reads the shared clock every [`RESYNC`] until `shutdown`.
    pub async fn run(
        self: std::sync::Arc<Self>,
        admission: std::sync::Arc<dyn Admission>,
        store: Store,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RESYNC) => {}
            }
            if let Err(e) = self.sync(admission.as_ref(), &store).await {
                tracing::warn!(error = %e, "cannot read the shared clock; carrying the last reading forward");
            }
        }
    }
}
