//! What knowing the shopper costs: admission requests/s on one host (embedded queue) with
//! `auth.mode = "jwt"` (RS256, each shopper's token used five times, as in the headline run),
//! `"signed-header"` and `"open"`, as ratios to `open` measured in the same round. The modes
//! alternate round by round so that drift on a shared machine falls on all of them.
//!
//! Limits are on in every mode (per shopper the defaults, per address far above the load, since
//! every request comes from one address), so the ratio is the verification alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use firstcome::app::App;
use firstcome_admission::Admission;
use firstcome_admission::embedded::EmbeddedAdmission;
use firstcome_core::campaign::Campaign;
use firstcome_platform::config::AuthMode;
use firstcome_store::Store;

const SIGNED_HEADER_SECRET: &str = "bench-signed-header-secret-0123456789abcdef";

/// One shopper's credential in each mode.
struct Credentials {
    user: String,
    token: String,
    signature: String,
}

/// An RS256 key pair made by `openssl genpkey`: the private PEM and a JWKS with its public half.
fn rsa_key() -> anyhow::Result<(EncodingKey, String)> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .context("openssl genpkey")?;
    anyhow::ensure!(out.status.success(), "openssl genpkey failed");
    let key = EncodingKey::from_rsa_pem(&out.stdout)?;
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256)?;
    jwk.common.key_id = Some("bench".into());
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    Ok((key, jwks))
}

fn credentials(users: usize, key: &EncodingKey) -> anyhow::Result<Vec<Credentials>> {
    use hmac::Mac;
    let now = chrono::Utc::now().timestamp();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    (0..users)
        .map(|i| {
            let user = format!("shopper-{i}");
            let claims = serde_json::json!({"sub": user, "exp": now + 3600, "iat": now});
            let token = jsonwebtoken::encode(&header, &claims, key)?;
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNED_HEADER_SECRET.as_bytes())?;
            mac.update(format!("{now}.{user}").as_bytes());
            let signature = format!("{now}:{}", hex::encode(mac.finalize().into_bytes()));
            Ok(Credentials {
                user,
                token,
                signature,
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Open,
    Jwt,
    SignedHeader,
}

/// Admission requests/s of one run in `mode`.
async fn run(
    mode: Mode,
    jwks: &str,
    shoppers: &[Credentials],
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut config = crate::quiet_config(dir.path());
    config.limits = Default::default();
    config.limits.per_address_per_s = 10_000_000;
    config.limits.per_address_burst = 10_000_000;
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks)?;
    match mode {
        Mode::Open => config.auth.mode = Some(AuthMode::Open),
        Mode::Jwt => {
            config.auth.mode = Some(AuthMode::Jwt);
            config.auth.jwks = Some(jwks_file.display().to_string());
        }
        Mode::SignedHeader => {
            config.auth.mode = Some(AuthMode::SignedHeader);
            config.auth.signed_header.secret = Some(SIGNED_HEADER_SECRET.into());
            config.auth.signed_header.max_age_s = 3_600;
        }
    }
    let store = Store::open(&config.database_url()).await?;
    let admission: Arc<dyn Admission> = Arc::new(EmbeddedAdmission::new(store.clone()));
    let app = App::build_with(config, store, admission).await?;
    let base = format!("http://{}", app.local_addr());
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let id = format!(
        "shoppers-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    platform
        .apply_campaign(Campaign::new(&id, crate::spec(shoppers.len() / 2))?)
        .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("{base}/api/v1/campaigns/{id}/requests");
    let users = shoppers.len();
    let started = Instant::now();
    let answers: Vec<anyhow::Result<u16>> = futures::stream::iter(0..requests)
        .map(|i| {
            // Request i comes from shopper (i × 7919) mod users: each shopper's five requests
            // are spread over the run, as in the headline run.
            let shopper = &shoppers[(i * 7919) % users];
            let request = client.post(&url);
            let request = match mode {
                Mode::Open => request.json(&serde_json::json!({ "user_id": shopper.user })),
                Mode::Jwt => request
                    .bearer_auth(&shopper.token)
                    .json(&serde_json::json!({})),
                Mode::SignedHeader => {
                    let (at, signature) = shopper.signature.split_once(':').unwrap();
                    request
                        .header("x-firstcome-user", &shopper.user)
                        .header("x-firstcome-timestamp", at)
                        .header("x-firstcome-signature", signature)
                        .json(&serde_json::json!({}))
                }
            };
            async move {
                let r = request.send().await?;
                let status = r.status().as_u16();
                r.bytes().await?;
                Ok(status)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    for answer in answers {
        let status = answer?;
        anyhow::ensure!(
            matches!(status, 202 | 409 | 410),
            "{mode:?}: an admission answered {status}"
        );
    }
    stop.cancel();
    server.await??;
    Ok(requests as f64 / elapsed.as_secs_f64())
}

/// Prints each round's requests/s per mode and the ratios to `open`, then their medians.
pub async fn phase(requests: usize, concurrency: usize, rounds: usize) -> anyhow::Result<()> {
    let users = (requests / 5).max(2);
    let (key, jwks) = rsa_key()?;
    let minted = Instant::now();
    let shoppers = credentials(users, &key)?;
    println!(
        "{users} shoppers, {requests} admission requests a run (five per shopper), {concurrency} \
         in flight; tokens minted in {:.1} s\n",
        minted.elapsed().as_secs_f64()
    );
    println!(
        "| round | open req/s | jwt (RS256) req/s | signed-header req/s | jwt / open | signed-header / open |"
    );
    println!("|---|---|---|---|---|---|");
    let (mut jwt_ratios, mut signed_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternate the order, so that neither mode always runs on a warmer machine.
        let order = if round % 2 == 1 {
            [Mode::Open, Mode::Jwt, Mode::SignedHeader]
        } else {
            [Mode::SignedHeader, Mode::Jwt, Mode::Open]
        };
        let mut rates = [0.0; 3];
        for mode in order {
            let rate = run(mode, &jwks, &shoppers, requests, concurrency).await?;
            rates[mode as usize] = rate;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let [open, jwt, signed] = rates;
        jwt_ratios.push(jwt / open);
        signed_ratios.push(signed / open);
        println!(
            "| {round} | {open:.0} | {jwt:.0} | {signed:.0} | {:.2} | {:.2} |",
            jwt / open,
            signed / open
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\nmedian jwt / open: **{:.2}**, median signed-header / open: **{:.2}**",
        median(&mut jwt_ratios),
        median(&mut signed_ratios)
    );
    Ok(())
}
