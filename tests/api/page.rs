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

/// The pages work under the security headers every response carries (a
/// Content-Security-Policy allowing no inline script or style): the live page's style sheet
/// applies and its script runs, Swagger UI renders, and a credential typed into Swagger UI is
/// not kept in the browser's storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pages_work_under_the_content_security_policy() {
    let app = spawn_app(Backend::Embedded).await;
    let id = app
        .campaign(CampaignSpec {
            public_stats: true,
            ..spec(4)
        })
        .await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/#{id}", app.address)).await;
    wait_for(20, || async { browser.text("remaining").await == "4" })
        .await
        .expect("the live page's script runs");
    let background = browser
        .execute("return getComputedStyle(document.body).backgroundColor;")
        .await;
    assert_eq!(background, "rgb(246, 247, 249)", "the style sheet applies");

    browser.open(&format!("{}/api/docs/", app.address)).await;
    wait_for(30, || async {
        browser
            .execute("const t = document.querySelector('.swagger-ui .info .title'); return t ? t.textContent : '';")
            .await
            .as_str()
            .is_some_and(|t| t.contains("firstcome"))
    })
    .await
    .expect("Swagger UI renders under the policy");
    // Authorise as an operator would, then look for the credential in the page's storage.
    let stored = browser
        .execute(
            "window.ui.authActions.authorize({admin_token: {name: 'admin_token', \
             schema: {type: 'http', scheme: 'bearer'}, value: 'typed-in-secret-token'}}); \
             return JSON.stringify(Object.assign({}, localStorage, sessionStorage));",
        )
        .await;
    let stored = stored.as_str().unwrap_or_default().to_owned();
    assert!(!stored.contains("typed-in-secret-token"), "{stored}");
    let authorized = browser
        .execute("return JSON.stringify(window.ui.authSelectors.authorized().toJS());")
        .await;
    assert!(
        authorized
            .as_str()
            .unwrap_or_default()
            .contains("typed-in-secret-token"),
        "the page itself holds it: {authorized}"
    );
    app.stop().await;
}
