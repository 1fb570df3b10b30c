//! The live campaign page in a real headless browser (Debian's Chromium, driven through
//! chromedriver's WebDriver API): it shows the campaign, its counters follow coupons issued
//! through the API, and it reads on a phone-sized screen. Screenshots are kept in
//! `{target}/artifacts/`.

use std::time::Duration;

use serde_json::{Value, json};

use firstcome_core::campaign::CampaignSpec;

use crate::browser::Browser;
use crate::helpers::{Backend, spawn_app, spec, wait_for, wasm, with_plugin};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_page_follows_a_campaign_in_a_real_browser() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app
        .campaign(with_plugin(
            // The page is public: its statistics are shown only when the campaign says so.
            CampaignSpec {
                public_stats: true,
                ..spec(10)
            },
            "stats",
            &wasm("stats"),
            &["stats"],
            &[],
        ))
        .await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/#{id}", app.address)).await;
    wait_for(20, || async {
        browser.text("issued").await == "0" && browser.text("remaining").await == "10"
    })
    .await
    .expect("the page shows the campaign's counters");
    assert_eq!(browser.text("title").await, "Test campaign");
    wait_for(20, || async { browser.text("state").await == "live" })
        .await
        .expect("the stream is live");

    for i in 0..6 {
        assert_eq!(app.request(&id, &format!("u{i}")).await.0, 202);
    }
    wait_for(20, || async {
        browser.text("issued").await == "6" && browser.text("remaining").await == "4"
    })
    .await
    .expect("the counters follow the issuance");
    wait_for(20, || async { browser.text("revenue").await == "6,000" })
        .await
        .expect("revenue from the stats plugin");
    wait_for(20, || async {
        browser.text("plugins").await.contains("stats")
    })
    .await
    .expect("the plugin version per role");
    browser.resize(1280, 900).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let laptop = browser.screenshot("live-page-laptop.png").await;

    browser.resize(390, 844).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let width: Value = browser
        .command(
            reqwest::Method::POST,
            "execute/sync",
            json!({"script": "return document.documentElement.scrollWidth;", "args": []}),
        )
        .await;
    assert!(
        width.as_u64().unwrap() <= 390,
        "no sideways scrolling on a phone: {width}"
    );
    let phone = browser.screenshot("live-page-phone.png").await;
    assert!(
        std::fs::metadata(&laptop).unwrap().len() > 10_000
            && std::fs::metadata(&phone).unwrap().len() > 5_000
    );

    // A campaign whose statistics are private: the page says so instead of retrying.
    let private = app.campaign(spec(3)).await;
    browser.open(&format!("{}/#{private}", app.address)).await;
    wait_for(20, || async {
        browser.text("state").await.contains("statistics private")
    })
    .await
    .expect("the page says the statistics are private");
    app.stop().await;
}
