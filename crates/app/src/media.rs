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
        let name = format!(
            "originals/{:032x}.{}",
            rand::random::<u128>(),
            format.extensions_str()[0]
        );
        let path = self.media_dir().join(&name);
        write_file(&path, &body)
            .await
            .map_err(|e| Error::Internal(format!("cannot store the upload: {e}")))?;
        let payload = serde_json::to_value(ImageJob {
            product_id,
            original: name,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        self.enqueue_job(
            bakery_events::topology::job_kind::IMAGE,
            Some(actor),
            payload,
        )
        .await
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

/// Writes aside, then renames: nobody ever reads half a file.
pub async fn write_file(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let temp = path.with_extension(format!("tmp{:x}", rand::random::<u32>()));
    tokio::fs::write(&temp, bytes).await?;
    tokio::fs::rename(&temp, path).await
}
