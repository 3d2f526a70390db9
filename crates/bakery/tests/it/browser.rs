//! The shop as its users meet it (issue 26): headless Chromium, driven over
//! WebDriver, signs up, confirms the address from the mail, logs in, reviews, RSVPs
//! and sees the confirmation arrive live on the page; an admin adds a photo through
//! the product page's form and sees its thumbnail in the list, then watches `/ops`
//! move under load with each clone serving.
//! A screenshot of each step is written under `target/browser/screenshots/`; axe-core
//! finds no serious or critical accessibility violation on the main pages.

use std::path::PathBuf;
use std::time::Duration;

use bakery_testkit::browser::Browser;
use bakery_testkit::mail::{SmtpSink, mails_to, token_in};

use crate::harness::{self, Up, eventually};

const LIMIT: Duration = Duration::from_secs(30);

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/browser/screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_signs_up_confirms_reviews_rsvps_live_and_an_admin_watches_ops() {
    let sink = SmtpSink::start();
    // With the demo bakery (and its photos), as a newcomer sees it.
    let up = Up::start_with(vec![("BAKERY_SMTP_URL".to_string(), sink.url())], 2, &[]);
    let browser = Browser::start(screenshots()).await;
    let name = format!("amy{:x}", rand::random::<u16>());
    let address = format!("{name}@example.com");

    // Sign up: the account page, the address not confirmed yet.
    browser.goto(&up.url("/signup")).await;
    browser.fill("input[name=username]", &name).await;
    browser.fill("input[name=email]", &address).await;
    browser
        .fill("input[name=password]", "a long enough password")
        .await;
    browser.submit("form[action='/signup'] button").await;
    assert!(
        browser.wait_text("main", "not confirmed yet", LIMIT).await,
        "after sign-up: {}",
        browser.text("main").await
    );
    browser.screenshot("1-signed-up").await;

    // The verification mail's link, opened in the browser.
    assert!(eventually(LIMIT, async || mails_to(&sink, &address).len() == 1).await);
    let token = token_in(&mails_to(&sink, &address)[0]);
    browser
        .goto(&up.url(&format!("/verify-email?token={token}")))
        .await;
    assert!(browser.wait_text("main", "Address confirmed", LIMIT).await);
    browser.screenshot("2-address-confirmed").await;

    // Log out, log in again.
    browser.goto(&up.url("/account")).await;
    assert!(browser.wait_text("main", "(confirmed)", LIMIT).await);
    browser.submit("form[action='/logout'] button").await;
    browser.goto(&up.url("/login")).await;
    browser.fill("input[name=username]", &name).await;
    browser
        .fill("input[name=password]", "a long enough password")
        .await;
    browser.submit("form[action='/login'] button").await;
    assert!(
        browser.wait_text("header", &name, LIMIT).await,
        "logged in: the header names the user"
    );
    browser.screenshot("3-logged-in").await;

    // A review, shown on the product's page.
    browser.goto(&up.url("/products/1")).await;
    browser
        .fill("textarea[name=body]", "Crisp crust, soft crumb.")
        .await;
    browser
        .submit("form[action='/products/1/reviews'] button")
        .await;
    assert!(
        browser
            .wait_text("main", "Crisp crust, soft crumb.", LIMIT)
            .await
    );
    browser.screenshot("4-reviewed").await;

    // An RSVP: the page after it shows the seat and then the mail, live.
    browser.goto(&up.url("/events")).await;
    browser.click("ul.items li a").await;
    browser.submit("form[action$='/rsvp'] button").await;
    assert!(
        browser.wait_text("#notes", "You have a seat", LIMIT).await,
        "the RSVP's notification shows on the page: {:?}",
        browser.text("#notes").await
    );
    assert!(
        browser
            .wait_text("#notes", "Confirmation mail sent", LIMIT)
            .await,
        "then the confirmation mail's: {:?}",
        browser.text("#notes").await
    );
    browser.screenshot("5-rsvp-confirmed-live").await;

    // Accessibility of the main pages, as this user sees them.
    let mut violations = Vec::new();
    for path in ["/", "/products", "/products/1", "/events", "/account"] {
        browser.goto(&up.url(path)).await;
        for v in browser.accessibility_violations().await {
            violations.push(format!(
                "{path}: {} ({}) {} at {:?}",
                v.id, v.impact, v.help, v.targets
            ));
        }
    }

    // The admin's turn.
    browser.submit("form[action='/logout'] button").await;
    browser.goto(&up.url("/login")).await;
    browser.fill("input[name=username]", "admin").await;
    browser.fill("input[name=password]", "admin-password").await;
    browser.submit("form[action='/login'] button").await;
    assert!(browser.wait_text("header", "admin", LIMIT).await);
    // The admin adds a photo through the product page's form: a worker makes its
    // sizes, and its thumbnail appears in the list.
    let admin = harness::log_in(&harness::client(), &up.base, "admin", "admin-password").await;
    let product = harness::create_product(
        &up.base,
        &admin,
        "Photogenic loaf",
        "Shot in good light",
        450,
    )
    .await;
    let file = std::env::temp_dir().join(format!("bakery-photo-{:x}.png", rand::random::<u64>()));
    std::fs::write(&file, crate::images::png(640, 480)).unwrap();
    browser.goto(&up.url(&format!("/products/{product}"))).await;
    browser
        .fill("input[type=file][name=photo]", &file.display().to_string())
        .await;
    browser
        .submit(&format!("form[action='/products/{product}/images'] button"))
        .await;
    let _ = std::fs::remove_file(&file);
    let thumbnail = eventually(LIMIT, async || {
        browser.goto(&up.url("/products")).await;
        browser.has(&format!("img.thumb[src*='/{product}/']")).await
    })
    .await;
    assert!(thumbnail, "the new photo's thumbnail shows in the list");
    browser.screenshot("6-thumbnail").await;
    browser.goto(&up.url(&format!("/products/{product}"))).await;
    assert!(browser.has("img.photo").await, "and the photo on its page");
    for v in browser.accessibility_violations().await {
        violations.push(format!(
            "the admin's product page: {} ({}) {} at {:?}",
            v.id, v.impact, v.help, v.targets
        ));
    }

    // The admin watches /ops while load runs: the live picture moves, each clone serves.
    let load = tokio::spawn({
        let base = up.base.clone();
        async move {
            let http = harness::client();
            loop {
                // Read to the end, so the connection is used again (as browsers do).
                if let Ok(answer) = http.get(format!("{base}/api/products/1")).send().await {
                    let _ = answer.bytes().await;
                }
            }
        }
    });
    browser.goto(&up.url("/ops")).await;
    let first = browser.text("#ops-live").await;
    let moving = eventually(LIMIT, async || {
        let now = browser.text("#ops-live").await;
        now != first && !now.contains("rates show from the next picture")
    })
    .await;
    assert!(moving, "the live picture replaces itself with rates");
    // What each member of the web pool has served, as the page shows it now.
    let served = async || -> Vec<f64> {
        let cells = browser
            .run(
                "return [...document.querySelectorAll('#ops-live tr')]
                   .filter(r => r.cells.length === 4 && /^web-\\d/.test(r.cells[0].textContent.trim()))
                   .map(r => Number(r.cells[3].textContent));",
            )
            .await;
        cells
            .as_array()
            .map(|cells| cells.iter().filter_map(|n| n.as_f64()).collect())
            .unwrap_or_default()
    };
    let at_first = served().await;
    assert_eq!(
        at_first.len(),
        2,
        "both clones in the web pool: {at_first:?}"
    );
    let both_serve = eventually(LIMIT, async || {
        let now = served().await;
        now.len() == 2
            && now
                .iter()
                .zip(&at_first)
                .all(|(now, then)| *now >= then + 20.0)
    })
    .await;
    load.abort();
    assert!(
        both_serve,
        "each clone of the web pool has served under the load, live on /ops"
    );
    browser.screenshot("7-ops-live").await;
    for v in browser.accessibility_violations().await {
        violations.push(format!(
            "/ops: {} ({}) {} at {:?}",
            v.id, v.impact, v.help, v.targets
        ));
    }
    assert!(
        violations.is_empty(),
        "serious or critical accessibility violations:\n{}",
        violations.join("\n")
    );
    browser.close().await;
}
