//! Decoding one image file into a normalised `(3, S, S)` float tensor: shorter side resized to
//! `resize` (bilinear), centre crop `crop`, per-channel mean/std. The data issue replaces this
//! with the full pipeline; it stays the entry point for single files (`alexnet forward`).
use crate::error::{Error, Result};
use image::imageops::{self, FilterType};
use std::path::Path;
use tch::Tensor;

/// torchvision's (ImageNet) channel means and standard deviations.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Refuse images above this many pixels (decompression bombs): the decoder's allocation limit.
pub const MAX_PIXELS: u64 = 128 * 1024 * 1024;

fn file_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Decodes `path` to RGB8 (greyscale, RGBA and 16-bit inputs are converted). The decoder's
/// allocation limit refuses decompression bombs before any pixel buffer is allocated.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    let mut reader = image::ImageReader::open(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|e| file_err(path, e))?;
    if reader.format().is_none() {
        return Err(file_err(path, "not a recognised image format"));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    Ok(reader.decode().map_err(|e| file_err(path, e))?.to_rgb8())
}

/// Shorter side to `resize`, centre crop `crop` x `crop`, scale to [0, 1], then (v - mean) / std:
/// a `(3, crop, crop)` float32 tensor.
pub fn to_tensor(img: &image::RgbImage, resize: u32, crop: u32, mean: [f32; 3], std: [f32; 3]) -> Tensor {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (
            resize,
            ((u64::from(h) * u64::from(resize) + u64::from(w) / 2) / u64::from(w)) as u32,
        )
    } else {
        (
            ((u64::from(w) * u64::from(resize) + u64::from(h) / 2) / u64::from(h)) as u32,
            resize,
        )
    };
    let resized = imageops::resize(img, nw.max(crop), nh.max(crop), FilterType::Triangle);
    let (left, top) = ((resized.width() - crop) / 2, (resized.height() - crop) / 2);
    let cropped = imageops::crop_imm(&resized, left, top, crop, crop).to_image();
    let plane = (crop * crop) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in cropped.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = (f32::from(px[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    Tensor::from_slice(&chw).view([3, i64::from(crop), i64::from(crop)])
}
