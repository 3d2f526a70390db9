//! Product photos as jobs (issue "Asynchronism II"): uploads are checked and queued,
//! workers make the sizes and attach them once, even when a worker is killed mid-job;
//! hostile uploads fail with a clear error and the workers keep serving.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::{self, Engine, Up, eventually};
use crate::jobs::{ended, finished};

const LIMIT: Duration = Duration::from_secs(60);

/// A `width` x `height` PNG with some colour in it.
pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG of a few hundred bytes whose header claims `width` x `height` (a
/// decompression bomb's shape): a real 1x1 PNG with its IHDR rewritten.
fn lying_png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

async fn upload(
    up: &Up,
    admin: &str,
    product: i64,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    harness::client()
        .post(up.url(&format!("/api/products/{product}/images")))
        .header("cookie", admin)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn product_with_images(up: &Up, admin: &str) -> i64 {
    harness::create_product(&up.base, admin, "Rye loaf", "Dark and dense.", 650).await
}

#[tokio::test]
async fn twelve_uploads_with_a_worker_killed_mid_job_give_twelve_images_once_each_embedded() {
    twelve_uploads(Engine::Embedded).await;
}

#[tokio::test]
async fn twelve_uploads_with_a_worker_killed_mid_job_give_twelve_images_once_each_embedded_on_postgres()
 {
    twelve_uploads(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn twelve_uploads_with_a_worker_killed_mid_job_give_twelve_images_once_each_embedded_on_mariadb()
 {
    twelve_uploads(Engine::EmbeddedMariaDb).await;
}

#[tokio::test]
async fn twelve_uploads_with_a_worker_killed_mid_job_give_twelve_images_once_each_rabbitmq() {
    twelve_uploads(Engine::RabbitMq).await;
}

async fn twelve_uploads(engine: Engine) {
    let mut env = vec![
        ("BAKERY_JOB_LEASE_SECS".to_string(), "2".to_string()),
        ("BAKERY_OUTBOX_SWEEP_AFTER_MS".into(), "500".into()),
        ("BAKERY_WORKER_CPU_CONCURRENCY".into(), "2".into()),
    ];
    env.extend(engine.env().await);
    let mut up = Up::start(env, 1);
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let product = product_with_images(&up, &admin).await;
    let photo = png(1600, 1200);
    let mut jobs = Vec::new();
    for _ in 0..12 {
        let answer = upload(&up, &admin, product, "image/png", photo.clone()).await;
        assert_eq!(answer.status(), 202);
        jobs.push(
            answer.json::<Value>().await.unwrap()["job_id"]
                .as_i64()
                .unwrap(),
        );
    }
    // Kill a worker while it holds a running job.
    let mut holder = None;
    let found = eventually(LIMIT, async || {
        let (_, listed, _) =
            harness::run_output(&["jobs", "list", "--state", "running"], up.env.clone());
        holder = listed
            .lines()
            .find(|l| l.contains(" image "))
            .and_then(|l| l.split_whitespace().nth(5))
            .filter(|w| w.starts_with("worker-"))
            .map(str::to_string);
        holder.is_some()
    })
    .await;
    assert!(found, "no image job was seen running");
    let holder = holder.unwrap();
    kill(Pid::from_raw(up.process(&holder).pid), Signal::SIGKILL).unwrap();

    for id in &jobs {
        let done = ended(&up, &admin, *id).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let restarted = format!("started role=worker id={holder} ");
    assert!(up.wait_line(LIMIT, |l| l.starts_with(&restarted)).is_some());

    let shown: Value = http
        .get(up.url(&format!("/api/products/{product}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let images = shown["images"].as_array().unwrap();
    assert_eq!(
        images.len(),
        12,
        "one image per upload, none twice: {shown}"
    );
    let thumb = http
        .get(up.url(images[0]["thumb_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status(), 200);
    let thumb = thumb.bytes().await.unwrap();
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert!(decoded.width() <= 256 && decoded.height() <= 256);
    let display = http
        .get(up.url(images[0]["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(image::load_from_memory(&display).unwrap().width(), 1024);

    // The list shows the product's first photo as its thumbnail (issue 26, 3): the
    // cached list query was invalidated by the photos' arrival.
    let list: Value = http
        .get(up.url("/api/products?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == product)
        .cloned()
        .unwrap();
    let thumb_url = listed["thumb_url"].as_str().unwrap_or_default().to_string();
    assert!(thumb_url.starts_with("/media/products/"), "{listed}");
    let page = http
        .get(up.url("/products"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // (The template escapes the URL as HTML: `/` is written `&#x2f;`.)
    let escaped = thumb_url.replace('/', "&#x2f;");
    assert!(
        page.contains(&format!("class=\"thumb\" src=\"{escaped}\"")),
        "{page}"
    );

    // One job.finished per upload for its owner.
    assert!(eventually(LIMIT, async || finished(&up, &admin).await.len() == 12).await);
    assert!(finished(&up, &admin).await.values().all(|n| *n == 1));
}

#[tokio::test]
async fn hostile_uploads_fail_clearly_and_the_workers_keep_serving() {
    let up = Up::start(vec![], 1);
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let product = product_with_images(&up, &admin).await;

    let not_an_image = upload(
        &up,
        &admin,
        product,
        "image/png",
        b"GIF89a or just text".to_vec(),
    )
    .await;
    assert_eq!(not_an_image.status(), 400);
    assert_eq!(
        harness::error_code(not_an_image).await,
        "not_that_image_type"
    );
    let lying = upload(&up, &admin, product, "image/jpeg", png(8, 8)).await;
    assert_eq!(harness::error_code(lying).await, "not_that_image_type");
    let wrong_type = upload(&up, &admin, product, "text/plain", png(8, 8)).await;
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(
        harness::error_code(wrong_type).await,
        "unsupported_media_type"
    );
    let bomb = lying_png(20_000, 20_000);
    assert!(bomb.len() < 1000);
    let bomb = upload(&up, &admin, product, "image/png", bomb).await;
    assert_eq!(bomb.status(), 422);
    assert_eq!(harness::error_code(bomb).await, "image_too_large");
    let huge = upload(&up, &admin, product, "image/png", vec![0u8; 11 << 20]).await;
    assert_eq!(huge.status(), 413);
    let missing = upload(&up, &admin, 999_999, "image/png", png(8, 8)).await;
    assert_eq!(missing.status(), 404);
    // Refused before its body was read, an upload's connection is closed, and the
    // answer says so: the load balancer must not send another request on it (it
    // did, and that request failed 503, once in nine full runs).
    let clone = up.clones()[0].addr;
    for (content_type, cookie) in [("text/plain", admin.as_str()), ("image/png", "")] {
        let refused = http
            .post(format!("http://{clone}/api/products/{product}/images"))
            .header("content-type", content_type)
            .header("cookie", cookie)
            .body(vec![0u8; 64 << 10])
            .send()
            .await
            .unwrap();
        assert!(refused.status().is_client_error(), "{content_type}");
        if refused.status() != 401 {
            assert_eq!(
                refused
                    .headers()
                    .get("connection")
                    .map(|v| v.to_str().unwrap()),
                Some("close"),
                "{content_type}: {:?}",
                refused.headers()
            );
        }
    }

    // A truncated file has a sane header: it is queued, and its job fails cleanly.
    let mut truncated = png(400, 300);
    truncated.truncate(truncated.len() / 2);
    let queued = upload(&up, &admin, product, "image/png", truncated).await;
    assert_eq!(queued.status(), 202);
    let id = queued.json::<Value>().await.unwrap()["job_id"]
        .as_i64()
        .unwrap();
    let failed = ended(&up, &admin, id).await;
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("decode"),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 1, "a broken file is not retried");

    // The workers are still there: a good upload after all that succeeds.
    let good = upload(&up, &admin, product, "image/png", png(300, 200)).await;
    let id = good.json::<Value>().await.unwrap()["job_id"]
        .as_i64()
        .unwrap();
    assert_eq!(ended(&up, &admin, id).await["state"], "succeeded");
    let others = harness::sign_up_and_log_in(&http, &up.base, "notadmin").await;
    let refused = upload(&up, &others, product, "image/png", png(8, 8)).await;
    assert_eq!(refused.status(), 403);
}

/// A browser's multipart form with one file part `photo`.
fn photo_form(content_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("bakery{:016x}", rand::random::<u64>());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"loaf\"\r\nContent-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The product page's photo form (issue 26): the admin's photo becomes an image
/// job like an API upload; a customer is refused before the body is read (and the
/// connection closed); a file that is not a photo is said so on the page.
#[tokio::test]
async fn the_product_page_takes_an_admins_photo_and_refuses_others() {
    let up = Up::start(vec![], 1);
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let customer = harness::sign_up_and_log_in(&http, &up.base, "photo_fan").await;
    let product = product_with_images(&up, &admin).await;
    let path = format!("/products/{product}/images");
    let url = up.url(&path);
    let send = async |url: &str, cookie: &str, (content_type, body): (String, Vec<u8>)| {
        http.post(url)
            .header("cookie", cookie)
            .header("content-type", content_type)
            .header("accept", "text/html")
            .body(body)
            .send()
            .await
            .unwrap()
    };

    // Straight to the clone, to see what it tells the load balancer: refused before
    // the body is read, so the connection is not used again.
    let clone = format!("http://{}{path}", up.clones()[0].addr);
    let refused = send(&clone, &customer, photo_form("image/png", &png(64, 64))).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["connection"], "close");
    let not_a_photo = send(&url, &admin, photo_form("text/plain", b"hello")).await;
    assert_eq!(not_a_photo.status(), 400);
    assert!(
        not_a_photo
            .text()
            .await
            .unwrap()
            .contains("A photo is a PNG or a JPEG image.")
    );
    let lying = send(&url, &admin, photo_form("image/png", b"not really a png")).await;
    assert_eq!(lying.status(), 400);

    let taken = send(&url, &admin, photo_form("image/png", &png(300, 200))).await;
    assert_eq!(taken.status(), 303);
    assert_eq!(
        taken.headers()["location"],
        format!("/products/{product}").as_str()
    );
    let shown = eventually(LIMIT, async || {
        let product: Value =
            harness::get_json(&up.url(&format!("/api/products/{product}")), &admin).await;
        product["images"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;
    assert!(shown, "the photo is made and attached by a worker");
}
