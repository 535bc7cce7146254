//! `alexnet prepare SRC DST --size S`: pre-resize a dataset once (the paper stored ImageNet at
//! 256 x 256), in parallel. Each output is written to a temporary file and renamed, so an
//! interrupted run leaves no half-written image, and a rerun skips the files already done: each
//! output carries a stamp (a JPEG comment) of its source's size and modification time and of the
//! settings, so a changed source, another `--size` or `--quality`, or a damaged output is made
//! again.
use crate::data::source::image_files;
use crate::data::transform::resize_shorter;
use crate::error::{io, Error, Result};
use crate::image::load_rgb;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct PrepareReport {
    pub written: usize,
    pub skipped_existing: usize,
    /// Files that could not be decoded or written, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Images in `dst` that no source maps to (a source since removed or renamed): left alone.
    pub orphans: usize,
}

/// Resizes every image under `src` (shorter side to `size`) into the same relative path under
/// `dst`, as JPEG (`quality`). `progress(done, total)` is called as files finish.
pub fn prepare(
    src: &Path,
    dst: &Path,
    size: u32,
    quality: u8,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<PrepareReport> {
    if size == 0 {
        return Err(Error::Config("--size must be >= 1".into()));
    }
    check_apart(src, dst)?;
    if let Some(e) = crate::files::in_the_way(dst, dst) {
        return Err(e);
    }
    let files = image_files(src)?;
    if files.is_empty() {
        return Err(Error::File {
            path: src.to_path_buf(),
            reason: format!(
                "no image files under it ({})",
                crate::data::source::IMAGE_EXTENSIONS.join(", ")
            ),
        });
    }
    check_collisions(src, dst, &files)?;
    let total = files.len();
    let done = AtomicUsize::new(0);
    let results: Vec<(PathBuf, Result<bool>)> = files
        .par_iter()
        .map(|f| {
            let out = output(src, dst, f);
            let r = prepare_one(f, &out, size, quality);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            (f.clone(), r)
        })
        .collect();
    let mut report = PrepareReport::default();
    if let Ok(all) = image_files(dst) {
        let made: std::collections::HashSet<PathBuf> = files.iter().map(|f| output(src, dst, f)).collect();
        report.orphans = all.iter().filter(|f| !made.contains(*f)).count();
    }
    for (f, r) in results {
        match r {
            Ok(true) => report.written += 1,
            Ok(false) => report.skipped_existing += 1,
            Err(e) => report.failed.push((f, e.to_string())), // the message names the file
        }
    }
    Ok(report)
}

/// Where `f` (under `src`) goes: the same relative path under `dst`, as `.jpg`.
fn output(src: &Path, dst: &Path, f: &Path) -> PathBuf {
    let rel = f.strip_prefix(src).expect("image_files returns paths under src");
    dst.join(rel).with_extension("jpg")
}

/// Refuses a `dst` that is `src`, inside it or around it: every rerun would take the earlier
/// outputs as inputs (out/out/out/...), with `dst == src` a `.jpg` source would count as its own
/// output, and with `src` inside `dst` an output could overwrite a source.
fn check_apart(src: &Path, dst: &Path) -> Result<()> {
    let s = src.canonicalize().map_err(io(src))?;
    let d = crate::files::resolved(dst)?;
    let why = if d.starts_with(&s) {
        "the destination is inside the source (its outputs would become inputs)"
    } else if s.starts_with(&d) {
        "the source is inside the destination (an output could overwrite a source)"
    } else {
        return Ok(());
    };
    Err(Error::Config(format!(
        "{why}: source {}, destination {}; pick folders apart",
        src.display(),
        dst.display()
    )))
}

/// Refuses, before writing anything, sources that would share an output (`a.png` and `a.jpg`
/// both become `a.jpg`): one would silently be dropped as "already there".
fn check_collisions(src: &Path, dst: &Path, files: &[PathBuf]) -> Result<()> {
    let mut by_output: std::collections::BTreeMap<PathBuf, Vec<&Path>> = Default::default();
    for f in files {
        by_output.entry(output(src, dst, f)).or_default().push(f);
    }
    let mut clashes: Vec<String> = by_output
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(out, v)| {
            let names: Vec<String> = v.iter().map(|p| p.display().to_string()).collect();
            format!("{} -> {}", names.join(" and "), out.display())
        })
        .collect();
    // An output that would be a folder of other outputs (`b.png` and `b.jpg/x.png`).
    for (out, v) in &by_output {
        if let Some((folder, under)) = out
            .ancestors()
            .skip(1)
            .take_while(|a| *a != dst)
            .find_map(|a| by_output.get(a).map(|u| (a, u)))
        {
            clashes.push(format!(
                "{} -> {} and {} -> a file inside it, {}",
                under[0].display(),
                folder.display(),
                v[0].display(),
                out.display()
            ));
        }
    }
    if clashes.is_empty() {
        return Ok(());
    }
    Err(Error::File {
        path: src.to_path_buf(),
        reason: format!(
            "{} output names would clash (every output is a .jpg): {}; rename one of each",
            clashes.len(),
            clashes.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ),
    })
}

/// The stamp an output of `src` made with these settings carries (a JPEG comment). Its change
/// time too: `tar x` and `cp -p` give a new file an old modification time (and images of one
/// format and size have one length), but set the change time to now.
fn stamp(src: &Path, size: u32, quality: u8) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(src).map_err(io(src))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!(
        "alexnet_rs prepare: size {size}, quality {quality}, source {} bytes modified {modified} changed {}.{:09}",
        meta.len(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

/// The first comment (COM segment) among a JPEG's header segments.
fn jpeg_comment(bytes: &[u8]) -> Option<&[u8]> {
    let mut i = 2; // past SOI
    while bytes.get(i) == Some(&0xff) {
        let (code, len) = (bytes.get(i + 1)?, bytes.get(i + 2..i + 4)?);
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        match code {
            0xfe => return bytes.get(i + 4..i + 2 + len),
            0xda => return None, // the scan: no comment before it
            _ => i += 2 + len.max(2),
        }
    }
    None
}

/// `jpeg` (an encoder's output, JFIF APP0 first) with the comment `text` after its APP0.
fn with_comment(jpeg: &[u8], text: &str) -> Vec<u8> {
    let at = match jpeg.get(2..6) {
        Some([0xff, 0xe0, hi, lo]) => 4 + usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => 2,
    };
    let len = u16::try_from(text.len() + 2).expect("a short stamp");
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 4);
    out.extend_from_slice(&jpeg[..at]);
    out.extend_from_slice(&[0xff, 0xfe]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&jpeg[at..]);
    out
}

/// Returns Ok(false) when `out` is already this source's output with these settings (its stamp
/// matches and it is a whole JPEG); anything else is made again.
fn prepare_one(src: &Path, out: &Path, size: u32, quality: u8) -> Result<bool> {
    let stamp = stamp(src, size, quality)?;
    if std::fs::read(out)
        .is_ok_and(|b| jpeg_comment(&b) == Some(stamp.as_bytes()) && crate::image::jpeg_reaches_end(&b))
    {
        return Ok(false);
    }
    let img = resize_shorter(&load_rgb(src)?, size).map_err(|e| Error::File {
        path: src.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(&img)
        .map_err(|e| Error::File {
            path: src.to_path_buf(),
            reason: format!("cannot be written as a JPEG of {}x{}: {e}", img.width(), img.height()),
        })?;
    crate::files::create_dir(out.parent().expect("output has a folder"))?;
    crate::files::write(out, &with_comment(&jpeg, &stamp))?;
    Ok(true)
}
