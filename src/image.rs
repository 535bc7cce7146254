//! Decoding one image file to RGB8 with maintained codecs (`image`: zune-jpeg, png, …).
//! Greyscale, RGBA, CMYK and 16-bit inputs become RGB8 (a few TIFF variants, palette, float
//! or YCbCr, are refused, saying so); zero-byte, truncated, non-image and
//! oversized files are errors naming the file, never panics. And writing one ([`save`]).
use crate::error::{io, Error, Result};
use std::path::Path;

/// torchvision's (ImageNet) channel means and standard deviations.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Images above this many pixels are refused before decoding (decompression bombs): where PIL
/// refuses (twice its `Image.MAX_IMAGE_PIXELS`), so that a photo PIL opens (a 108 MP phone
/// camera's, a scan) is not skipped.
pub const MAX_PIXELS: u64 = 178_956_970;
/// Files above this size are refused unread: an image within [`MAX_PIXELS`] needs no more
/// (16-bit RGBA stored raw, plus 1 MiB of headers and metadata).
pub const MAX_FILE_BYTES: u64 = MAX_PIXELS * 8 + (1 << 20);

fn file_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn reader<'a>(path: &Path, bytes: &'a [u8]) -> Result<image::ImageReader<std::io::Cursor<&'a [u8]>>> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| file_err(path, e))?;
    if reader.format().is_none() {
        return Err(file_err(
            path,
            if bytes.is_empty() {
                "empty file"
            } else {
                "not a recognised image format"
            },
        ));
    }
    Ok(reader)
}

/// Decodes `path` to RGB8. The file is read once; the header's size is checked against
/// [`MAX_PIXELS`] before any pixel buffer is allocated; a JPEG must reach its end-of-image
/// marker (zune-jpeg fills a truncated file's missing rows with grey instead of failing).
/// RGB8 images decode straight into a buffer from this thread's pool (see [`recycle`]).
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    decode_rgb(path, &read_image_file(path)?)
}

/// The bytes of an image file, read only after its first bytes name an image format; devices,
/// FIFOs and files over [`MAX_FILE_BYTES`] are refused unread.
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(file_err(path, "not a regular file (a folder, device or FIFO)"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(file_err(
            path,
            format!(
                "{} bytes is over the limit of {MAX_FILE_BYTES} for an image file",
                meta.len()
            ),
        ));
    }
    let mut file = std::fs::File::open(path).map_err(io(path))?.take(MAX_FILE_BYTES);
    let mut bytes = Vec::new();
    (&mut file).take(64).read_to_end(&mut bytes).map_err(io(path))?;
    reader(path, &bytes)?; // the format's magic bytes
    bytes.reserve(meta.len().saturating_sub(64) as usize);
    file.read_to_end(&mut bytes).map_err(io(path))?;
    Ok(bytes)
}

/// Decodes the bytes of an image file (`path` names it in errors), as [`load_rgb`]. A panic in
/// a codec (a bug in it, reached by a damaged file) is this file's error, not the thread's end.
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<image::RgbImage> {
    crate::error::catch_panic(|| decode(path, bytes)).unwrap_or_else(|message| {
        Err(file_err(
            path,
            format!("the image decoder failed on this file ({message}): damaged file"),
        ))
    })
}

/// A codec's error on `path`; for a variant it does not read (a palette, float or YCbCr TIFF),
/// what to do about it.
fn codec_err(path: &Path, e: image::ImageError) -> Error {
    use image::error::UnsupportedErrorKind;
    let hint = match &e {
        image::ImageError::Unsupported(u) => match u.kind() {
            UnsupportedErrorKind::Format(_) => " (a format this build does not read: convert it to PNG or JPEG)",
            _ => " (a variant of the format this decoder does not read: convert it to 8-bit RGB, e.g. PNG)",
        },
        _ => "",
    };
    file_err(path, format!("{e}{hint}"))
}

fn decode(path: &Path, bytes: &[u8]) -> Result<image::RgbImage> {
    use image::ImageDecoder;
    let r = reader(path, bytes)?;
    if r.format() == Some(image::ImageFormat::Jpeg) && !jpeg_reaches_end(bytes) {
        return Err(file_err(
            path,
            "truncated JPEG (it ends before its end-of-image marker)",
        ));
    }
    let mut decoder = r.into_decoder().map_err(|e| codec_err(path, e))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        // PNM allows it; an empty image was refused later, as "empty image", or not at all.
        return Err(file_err(path, format!("{w}x{h} pixels: an image without pixels")));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(file_err(
            path,
            format!("{w}x{h} pixels is over the limit of {MAX_PIXELS} (decompression bomb?)"),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8); // 16-bit RGBA at the pixel limit
    decoder.set_limits(limits).map_err(|e| file_err(path, e))?;
    if decoder.color_type() == image::ColorType::Rgb8 {
        let mut buf = take_buffer(decoder.total_bytes() as usize);
        decoder.read_image(&mut buf).map_err(|e| codec_err(path, e))?;
        return Ok(image::RgbImage::from_raw(w, h, buf).expect("w * h * 3 bytes"));
    }
    // Greyscale, RGBA, CMYK, 16-bit...: decode, then convert.
    Ok(image::DynamicImage::from_decoder(decoder)
        .map_err(|e| codec_err(path, e))?
        .into_rgb8())
}

/// Whether a JPEG's marker structure reaches its end-of-image marker: segments are skipped by
/// their lengths and scans up to their next marker, so a `FF D9` inside a comment or an EXIF
/// thumbnail is not taken for the end (a file cut after one was decoded with grey rows), and
/// bytes after the end (a motion photo's video, padding) are allowed.
pub fn jpeg_reaches_end(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let mut i = 2; // past SOI
    loop {
        // The next marker: 0xFF (fill bytes allowed) and its code.
        while i < n && bytes[i] != 0xff {
            i += 1; // stray bytes, which decoders skip with a warning
        }
        while i < n && bytes[i] == 0xff {
            i += 1;
        }
        let Some(&code) = bytes.get(i) else { return false };
        i += 1;
        match code {
            0xd9 => return true,
            0x00 | 0x01 | 0xd0..=0xd8 => {} // no length: stuffing, TEM, RSTn, SOI
            _ => {
                let Some(len) = bytes
                    .get(i..i + 2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                else {
                    return false;
                };
                i += len.max(2);
                if code == 0xda {
                    // A scan's entropy-coded data runs to the next marker other than a stuffed
                    // zero or a restart marker.
                    loop {
                        let Some(at) = bytes.get(i..).and_then(|b| b.iter().position(|&x| x == 0xff)) else {
                            return false;
                        };
                        i += at + 1;
                        match bytes.get(i) {
                            Some(0x00 | 0xd0..=0xd7) => i += 1,
                            Some(0xff) => {}
                            _ => {
                                i -= 1;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A byte buffer of `len` bytes from this thread's pool (contents unspecified). Reusing the
/// few large buffers an image needs avoids fresh allocations, which glibc serves with mmap (and
/// so page faults) above its threshold: up to 1.5x the throughput on 500x375 JPEGs. The
/// smallest pooled buffer that holds `len` is taken (else the largest, grown).
pub fn take_buffer(len: usize) -> Vec<u8> {
    let mut v = POOL
        .with(|p| {
            let mut p = p.borrow_mut();
            let fits = (0..p.len())
                .filter(|&i| p[i].capacity() >= len)
                .min_by_key(|&i| p[i].capacity());
            let i = fits.or_else(|| (0..p.len()).max_by_key(|&i| p[i].capacity()))?;
            Some(p.swap_remove(i))
        })
        .unwrap_or_default();
    v.resize(len, 0);
    v
}

/// Returns a buffer (e.g. `image.into_raw()`) to this thread's pool, which keeps the largest
/// few: a sample returns more buffers than it takes (the resizer's own), and a full pool that
/// dropped the newest dropped the decoder's large one, allocated again for every image.
pub fn recycle(buf: Vec<u8>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 8 {
            p.push(buf);
        } else if let Some(i) = (0..p.len()).min_by_key(|&i| p[i].capacity()) {
            if p[i].capacity() < buf.capacity() {
                p[i] = buf;
            }
        }
    });
}

/// Whether a figure can be written to `out`, checked before the work that draws it: a file name
/// whose extension is an image format, not a folder, with no file where one of its folders
/// should be (each error names the culprit). Returns the format.
pub fn check_output(out: &Path) -> Result<image::ImageFormat> {
    crate::files::check_file_target(out, "figure", "figure.png")?;
    image::ImageFormat::from_path(out).map_err(|e| file_err(out, format!("{e} (name it .png)")))
}

/// Writes `img` to `out` in the format its extension names (`.png` for our figures), creating
/// `out`'s folder: into a temporary file renamed over `out`, so a figure that is replaced (curves.png
/// at every epoch) is the old or the new one after a kill or a full disk, never a truncated file.
pub fn save(img: &image::RgbImage, out: &Path) -> Result<()> {
    let format = check_output(out)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::create_dir(dir)?;
    }
    // Encoded in memory, then written with every error seen: `save_with_format` writes a PNG's
    // last bytes when its buffered writer is dropped, and loses a failure there (a full disk).
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .map_err(|e| file_err(out, e))?;
    crate::files::write_with(out, |tmp| {
        std::fs::write(tmp, &bytes)
            .map_err(io(out))
            .and_then(|()| crate::fault::point("figure-write").map_err(io(out)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_the_large_buffer_a_sample_takes_again() {
        // Per sample: two buffers taken (decode, square) and three returned (the resizer's too).
        // A full pool kept the first eight and dropped the rest: the decoder's large buffer,
        // allocated afresh for every image from the eighth on.
        let mut last = std::ptr::null();
        for _ in 0..20 {
            let big = take_buffer(1 << 20);
            let square = take_buffer(100);
            recycle(vec![0u8; 200]); // the resizer's
            recycle(square);
            last = big.as_ptr();
            recycle(big);
        }
        let again = take_buffer(1 << 20);
        assert_eq!(again.as_ptr(), last);
    }
}
