//! The `image` job: decode the original under limits (a decompression bomb fails the
//! job, never the worker), drop its metadata (re-encoding keeps pixels only), write a
//! display size and a thumbnail, and attach them to the product.

use std::io::Cursor;

use bakery_app::App;
use bakery_app::media::{ImageJob, MAX_PIXELS, MAX_SIDE, write_file};
use bakery_db::jobs::Claimed;
use image::{DynamicImage, ImageReader, Limits};

use crate::job::{JobError, Progress};

/// The sizes made, by longest side.
const DISPLAY: u32 = 1024;
const THUMB: u32 = 256;
/// Memory the decoder may allocate at most.
const MAX_ALLOC: u64 = 512 << 20;

pub async fn run(
    app: &App,
    job: &Claimed,
    progress: &Progress,
) -> Result<serde_json::Value, JobError> {
    let spec: ImageJob = serde_json::from_str(&job.payload)
        .map_err(|e| JobError::Permanent(format!("malformed image job: {e}")))?;
    let original = spec.original_in(app.media_dir()).ok_or_else(|| {
        JobError::Permanent(format!(
            "the original {:?} is not a file of the media directory's originals",
            spec.original
        ))
    })?;
    let bytes = tokio::fs::read(&original).await.map_err(|e| {
        JobError::Permanent(format!(
            "cannot read the original {}: {e}",
            original.display()
        ))
    })?;
    progress.set(10);
    // Decoding and resizing are CPU work: off the async threads.
    let (display, thumb) = tokio::task::spawn_blocking(move || process(&bytes))
        .await
        .map_err(|e| JobError::Transient(format!("the image task failed: {e}")))??;
    progress.set(80);
    let dir = format!("products/{}", spec.product_id);
    let display_name = format!("{dir}/{}-{DISPLAY}.jpg", job.id);
    let thumb_name = format!("{dir}/{}-{THUMB}.jpg", job.id);
    for (name, data) in [(&display_name, &display), (&thumb_name, &thumb)] {
        write_file(&app.media_dir().join(name), data)
            .await
            .map_err(|e| JobError::Transient(format!("cannot store {name}: {e}")))?;
    }
    progress.set(90);
    let url = format!("/media/{display_name}");
    let thumb_url = format!("/media/{thumb_name}");
    let attached = app
        .attach_image(spec.product_id, job.id, &url, &thumb_url)
        .await
        .map_err(|e| JobError::Transient(e.to_string()))?;
    if !attached {
        return Err(JobError::Permanent(format!(
            "product {} is gone",
            spec.product_id
        )));
    }
    Ok(serde_json::json!({ "product_id": spec.product_id, "url": url, "thumb_url": thumb_url }))
}

/// A reader of `bytes` that refuses more than the limits allow, whatever the
/// header claims.
fn limited(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, JobError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| JobError::Permanent(format!("not an image: {e}")))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    Ok(reader)
}

/// Decodes under limits and encodes the two sizes as JPEG.
fn process(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), JobError> {
    let (width, height) = limited(bytes)?
        .into_dimensions()
        .map_err(|e| JobError::Permanent(format!("cannot read the image: {e}")))?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(JobError::Permanent(format!(
            "{width} x {height} is too many pixels"
        )));
    }
    let image = limited(bytes)?
        .decode()
        .map_err(|e| JobError::Permanent(format!("cannot decode the image: {e}")))?;
    Ok((
        jpeg(&image.thumbnail(DISPLAY, DISPLAY))?,
        jpeg(&image.thumbnail(THUMB, THUMB))?,
    ))
}

fn jpeg(image: &DynamicImage) -> Result<Vec<u8>, JobError> {
    let mut out = Vec::new();
    let rgb = image.to_rgb8();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&rgb)
        .map_err(|e| JobError::Permanent(format!("cannot encode: {e}")))?;
    Ok(out)
}
