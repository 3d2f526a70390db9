//! Product photos: an upload is checked cheaply (its bytes are the type it claims,
//! its header's dimensions are sane), stored as the original, and handed to a worker
//! as an `image` job; the worker's thumbnails are attached to the product once.
//!
//! Files live under `$BAKERY_DATA_DIR/media/` (originals in `originals/`, what is
//! served in `products/{id}/`), served at `/media/...` by every web clone. On several
//! machines that directory is a shared volume (NFS, or an object store mounted or
//! synced into it); every process that writes or serves media needs it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bakery_core::{Invalid, User};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{App, Error, Written};

/// Uploads larger than this are refused before they are read (413).
pub const UPLOAD_LIMIT: usize = 10 << 20;
/// Longest side and pixel count an upload may declare; the worker decodes under the
/// same limits, whatever the header said.
pub const MAX_SIDE: u32 = 12_000;
pub const MAX_PIXELS: u64 = 40_000_000;

/// What an `image` job is given.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImageJob {
    pub product_id: i64,
    /// The original, relative to the media directory.
    pub original: String,
}

impl ImageJob {
    /// Where the original is: only ever a file directly in `originals/` under the
    /// media directory (a payload naming `/etc/passwd` or `../..` names nothing).
    pub fn original_in(&self, media_dir: &Path) -> Option<std::path::PathBuf> {
        let name = self.original.strip_prefix("originals/")?;
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        plain.then(|| media_dir.join("originals").join(name))
    }
}

pub use image::ImageFormat;

/// The accepted types, by `content-type`.
pub fn accepted(content_type: &str) -> Option<ImageFormat> {
    match content_type.split(';').next().unwrap_or("").trim() {
        "image/png" => Some(image::ImageFormat::Png),
        "image/jpeg" => Some(image::ImageFormat::Jpeg),
        _ => None,
    }
}

impl App {
    /// Where media files live.
    pub fn media_dir(&self) -> &Path {
        &self.0.media_dir
    }

    /// Checks and stores an upload, and queues its processing; answers the job id.
    pub async fn upload_image(
        &self,
        actor: &User,
        product_id: i64,
        format: image::ImageFormat,
        body: Bytes,
    ) -> Result<Written<i64>, Error> {
        self.require_admin(actor).await?;
        let sniffed = image::guess_format(&body).ok();
        if sniffed != Some(format) {
            return Err(Invalid::new(
                "not_that_image_type",
                format!("the body is not a {} image", format.extensions_str()[0]),
            )
            .into());
        }
        let (width, height) = image::ImageReader::with_format(Cursor::new(&body[..]), format)
            .into_dimensions()
            .map_err(|e| Invalid::new("bad_image", format!("the image cannot be read: {e}")))?;
        if width == 0 || height == 0 {
            return Err(Invalid::new("bad_image", "the image has no pixels").into());
        }
        if width > MAX_SIDE
            || height > MAX_SIDE
            || u64::from(width) * u64::from(height) > MAX_PIXELS
        {
            return Err(Error::Unprocessable {
                code: "image_too_large",
                message: format!(
                    "{width} x {height} is too large: at most {MAX_SIDE} px a side and {MAX_PIXELS} pixels"
                ),
            });
        }
        if self.db().product(product_id, None).await?.is_none() {
            return Err(Error::NotFound);
        }
        self.queue_original(product_id, format, &body, Some(actor))
            .await
    }

    /// Stores a checked original and queues its `image` job.
    async fn queue_original(
        &self,
        product_id: i64,
        format: image::ImageFormat,
        body: &[u8],
        owner: Option<&User>,
    ) -> Result<Written<i64>, Error> {
        let name = format!(
            "originals/{:032x}.{}",
            rand::random::<u128>(),
            format.extensions_str()[0]
        );
        let path = self.media_dir().join(&name);
        write_file(&path, body)
            .await
            .map_err(|e| Error::Internal(format!("cannot store the upload: {e}")))?;
        let payload = serde_json::to_value(ImageJob {
            product_id,
            original: name,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        self.enqueue_job(bakery_events::topology::job_kind::IMAGE, owner, payload)
            .await
    }

    /// Photos for the demo bakery: a loaf drawn for each product that has none,
    /// queued as an `image` job like an upload (nobody's), so the workers make its
    /// sizes as soon as they run. Answers how many were queued.
    pub async fn queue_demo_photos(&self) -> Result<usize, Error> {
        let products = self.db().list_products(None, 0, 100).await?;
        let mut queued = 0;
        for (n, product) in products.iter().enumerate() {
            if product.thumb_url.is_some() {
                continue;
            }
            let png = tokio::task::spawn_blocking(move || demo_photo(n))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            self.queue_original(product.id, image::ImageFormat::Png, &png, None)
                .await?;
            queued += 1;
        }
        Ok(queued)
    }

    /// Attaches a processed image (once per job) and refreshes `Product:{id}`.
    pub async fn attach_image(
        &self,
        product_id: i64,
        job_id: i64,
        url: &str,
        thumb_url: &str,
    ) -> Result<bool, Error> {
        let (app, url, thumb_url) = (self.clone(), url.to_string(), thumb_url.to_string());
        self.unit(async move {
            let (found, _) = app
                .db()
                .attach_image(product_id, job_id, &url, &thumb_url)
                .await?;
            app.product_restructured(product_id, &["product_images"])
                .await;
            Ok(found)
        })
        .await
    }
}

/// A loaf on a linen cloth, drawn: a warm crust shaded towards its edges, a few
/// lighter score marks, a soft shadow; the shape and colour vary with `seed`.
fn demo_photo(seed: usize) -> Result<Vec<u8>, Error> {
    const CRUSTS: [[f32; 3]; 4] = [
        [196.0, 134.0, 72.0],
        [150.0, 96.0, 52.0],
        [214.0, 170.0, 96.0],
        [176.0, 112.0, 60.0],
    ];
    let crust = CRUSTS[seed % CRUSTS.len()];
    let (rx, ry) = (
        250.0 + (seed % 3) as f32 * 25.0,
        130.0 + (seed % 5) as f32 * 14.0,
    );
    let picture = image::RgbImage::from_fn(640, 480, |x, y| {
        let (dx, dy) = (x as f32 - 320.0, y as f32 - 240.0);
        let inside = (dx / rx).powi(2) + (dy / ry).powi(2);
        let pixel = if inside <= 1.0 {
            let scored = inside < 0.6 && ((dx * 0.8 + dy) / 44.0).rem_euclid(1.0) < 0.1;
            let light = if scored {
                1.3
            } else {
                1.05 - 0.4 * inside - 0.25 * (dy / ry).max(0.0)
            };
            crust.map(|c| c * light)
        } else {
            let shadow = (dx / (rx * 1.1)).powi(2) + ((dy - ry * 0.4) / (ry * 1.1)).powi(2);
            let dim = 1.0 - 0.25 * (1.5 - shadow).clamp(0.0, 1.0);
            let weave = if (x / 6 + y / 6) % 2 == 0 { 0.0 } else { 6.0 };
            [236.0 - weave, 228.0 - weave, 214.0 - weave].map(|c| c * dim)
        };
        image::Rgb(pixel.map(|c| c.clamp(0.0, 255.0) as u8))
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Internal(format!("cannot draw a demo photo: {e}")))?;
    Ok(png)
}

/// Writes aside, then renames: nobody ever reads half a file.
pub async fn write_file(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let temp = path.with_extension(format!("tmp{:x}", rand::random::<u32>()));
    tokio::fs::write(&temp, bytes).await?;
    tokio::fs::rename(&temp, path).await
}
