//! A plugin that does what its `mode` setting says, for the host's fault tests:
//! `ok` (records history and counts `seen` in kv), `trap`, `loop` (never returns), `alloc`
//! (allocates without end), `permanent`, `retryable`, `ungranted` (emails without the grant),
//! `flood` (logs past the output limit), `huge` (a permanent error of `bytes` bytes, default
//! 70,000), `big-stat` (adds 2^62 to the statistic `big`: the second event overflows it),
//! `remember` (counts the events this instance has served in memory and adds 1 to the kv
//! counter `served.{n}` for its n-th; with `fail_at` / `trap_at` / `loop_at` = n it returns a
//! retryable error / traps / never returns on its n-th event instead), `peek` (writes to kv
//! the personal fields it was handed, or "none"), `spam` (emails `count` strangers, the
//! setting `also` (comma-separated) and the event's shopper, counting `sent`/`refused` in kv), `reads` (reads kv
//! `reads` times), `forge` (logs and fails with a line break and terminal escapes), `touch`
//! (holds `mb` MiB, default 20, for the instance's life; counts `touched` in kv), `slow`
//! (works `ms` milliseconds, default 10,000, then counts `seen` in kv). Whatever the mode, its
//! `init` works `init_ms` milliseconds first (default 0) on every instance, and fails when
//! `init_fails` is set.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "../../../wit", world: "consumer-with-init" });

use exports::firstcome::plugin::handler::Guest;
use exports::firstcome::plugin::init::Guest as Init;
use firstcome::plugin::types::{Event, HandleError};
use firstcome::plugin::{email, history, kv, log, settings, stats};

struct Misbehave;

/// Events this instance has served (`remember`): survives between events only when the host
/// reuses the instance.
static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Memory `touch` holds for the instance's life.
static HELD: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

impl Guest for Misbehave {
    fn handle(event: Event) -> Result<(), HandleError> {
        let Event::CouponIssued(c) = event;
        match settings::get("mode").as_deref().unwrap_or("ok") {
            "ok" => {
                history::record(&history::Entry {
                    event_id: c.event_id.clone(),
                    user_id: c.user_id.clone(),
                    coupon_id: c.coupon_id.clone(),
                    coupon_code: c.coupon_code.clone(),
                    issued_at_ms: c.issued_at_ms,
                });
                kv::increment("seen", 1);
                Ok(())
            }
            "trap" => panic!("misbehave: trap on {}", c.event_id),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // Worded as a mail server's refusal, quoting an address.
            "permanent" => Err(HandleError::Permanent(format!(
                "misbehave: refuses {} (550 <shopper@example.com>: no such user)",
                c.event_id
            ))),
            "retryable" => Err(HandleError::Retryable("misbehave: try later".into())),
            "ungranted" => {
                let _ = email::send("x@example.com", "hi", "sent without the email grant");
                Ok(())
            }
            "flood" => {
                let line = "x".repeat(64 * 1024);
                for _ in 0..1024 {
                    log::log(log::Level::Info, &line);
                }
                Ok(())
            }
            "huge" => {
                let bytes = settings::get("bytes")
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(70_000);
                Err(HandleError::Permanent("h".repeat(bytes)))
            }
            "remember" => {
                let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let at = |name: &str| settings::get(name).and_then(|v| v.parse::<u32>().ok());
                if at("trap_at") == Some(n) {
                    panic!("misbehave: trap on the instance's event {n}");
                }
                if at("loop_at") == Some(n) {
                    let mut spin: u64 = 0;
                    loop {
                        spin = std::hint::black_box(spin.wrapping_add(1));
                    }
                }
                if at("fail_at") == Some(n) {
                    return Err(HandleError::Retryable(format!(
                        "misbehave: fails the instance's event {n}"
                    )));
                }
                kv::increment(&format!("served.{n}"), 1);
                Ok(())
            }
            "slow" => {
                let ms: u64 = settings::get("ms")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(10_000);
                work(ms);
                kv::increment("seen", 1);
                Ok(())
            }
            "big-stat" => {
                stats::increment("big", 1 << 62);
                Ok(())
            }
            "touch" => {
                // Holds `mb` MiB, every page written, for as long as the instance lives.
                let mb: usize = settings::get("mb")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(20);
                let mut held = HELD.lock().unwrap();
                if held.is_empty() {
                    *held = vec![1u8; mb << 20];
                }
                std::hint::black_box(&*held);
                kv::increment("touched", 1);
                Ok(())
            }
            "peek" => {
                let seen = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
                kv::set("email", seen(&c.email).as_bytes());
                kv::set("fcm-token", seen(&c.fcm_token).as_bytes());
                kv::set("gender", seen(&c.gender).as_bytes());
                kv::set("age-group", seen(&c.age_group).as_bytes());
                Ok(())
            }
            "spam" => {
                let count = settings::get("count")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(200);
                let mut targets: Vec<String> = (0..count)
                    .map(|i| format!("stranger{i}@example.com"))
                    .collect();
                if let Some(also) = settings::get("also") {
                    targets.extend(also.split(',').map(str::to_owned));
                }
                targets.extend(c.email.clone());
                for to in targets {
                    let outcome = match email::send(&to, "hello", "spam") {
                        Ok(()) => "sent",
                        Err(_) => "refused",
                    };
                    kv::increment(outcome, 1);
                    kv::increment(&format!("{outcome}:{to}"), 1);
                }
                Ok(())
            }
            "reads" => {
                let reads: u64 = settings::get("reads")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1_000_000);
                for i in 0..reads {
                    std::hint::black_box(kv::get(&format!("k{}", i % 16)));
                }
                Ok(())
            }
            "forge" => {
                let forged = "ok\n2026-12-07T00:00:00Z  INFO firstcome: admin login accepted\u{1b}]0;pwned\u{7}";
                log::log(log::Level::Warn, forged);
                Err(HandleError::Permanent(forged.into()))
            }
            other => Err(HandleError::Permanent(format!("unknown mode {other:?}"))),
        }
    }
}

/// Spins for `ms` milliseconds (a busy plugin, not a sleeping one: the host must cut it off).
fn work(ms: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut spin: u64 = 0;
    while std::time::Instant::now() < until {
        spin = std::hint::black_box(spin.wrapping_add(1));
    }
}

impl Init for Misbehave {
    fn init(settings: Vec<(String, String)>) -> Result<(), String> {
        let get = |key: &str| settings.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        work(get("init_ms").and_then(|ms| ms.parse().ok()).unwrap_or(0));
        match get("init_fails") {
            Some(why) => Err(format!("misbehave: init refuses: {why}")),
            None => Ok(()),
        }
    }
}

export!(Misbehave);
