//! `alexnet prepare SRC DST --size S`: pre-resize a dataset once (the paper stored ImageNet at
//! 256 x 256), in parallel. Each output is written to a temporary file and renamed, so an
//! interrupted run leaves no half-written image, and a rerun skips the files already done.
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
    check_outside(src, dst)?;
    let files = image_files(src)?;
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

/// Refuses a `dst` that is `src` or inside it: every rerun would take the earlier outputs as
/// inputs (out/out/out/...), and with `dst == src` a `.jpg` source would count as its own output.
fn check_outside(src: &Path, dst: &Path) -> Result<()> {
    let s = src.canonicalize().map_err(io(src))?;
    // dst may not exist yet: its nearest existing folder, resolved, and the rest of the path.
    let existing = dst.ancestors().find(|a| a.exists()).unwrap_or(Path::new("."));
    let base = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    let d = base
        .canonicalize()
        .map_err(io(base))?
        .join(dst.strip_prefix(existing).unwrap_or(dst));
    if d.starts_with(&s) {
        return Err(Error::Config(format!(
            "the destination {} is inside the source {} (its outputs would become inputs); pick a folder outside it",
            dst.display(),
            src.display()
        )));
    }
    Ok(())
}

/// Refuses, before writing anything, sources that would share an output (`a.png` and `a.jpg`
/// both become `a.jpg`): one would silently be dropped as "already there".
fn check_collisions(src: &Path, dst: &Path, files: &[PathBuf]) -> Result<()> {
    let mut by_output: std::collections::BTreeMap<PathBuf, Vec<&Path>> = Default::default();
    for f in files {
        by_output.entry(output(src, dst, f)).or_default().push(f);
    }
    let clashes: Vec<String> = by_output
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(out, v)| {
            let names: Vec<String> = v.iter().map(|p| p.display().to_string()).collect();
            format!("{} -> {}", names.join(" and "), out.display())
        })
        .collect();
    if clashes.is_empty() {
        return Ok(());
    }
    Err(Error::File {
        path: src.to_path_buf(),
        reason: format!(
            "{} output names would be written twice (every output is a .jpg): {}; rename one of each",
            clashes.len(),
            clashes.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ),
    })
}

/// Returns Ok(false) when `out` already exists at this size (a finished earlier run); one of
/// another `--size` (or unreadable) is made again.
fn prepare_one(src: &Path, out: &Path, size: u32, quality: u8) -> Result<bool> {
    if out.is_file() && image::image_dimensions(out).is_ok_and(|(w, h)| w.min(h) == size) {
        return Ok(false);
    }
    let img = resize_shorter(&load_rgb(src)?, size).map_err(|e| Error::File {
        path: src.to_path_buf(),
        reason: e.to_string(),
    })?;
    let dir = out.parent().expect("output has a folder");
    crate::files::create_dir(dir)?;
    crate::files::write_with(out, |tmp| {
        let file = std::fs::File::create(tmp).map_err(io(tmp))?;
        let mut w = std::io::BufWriter::new(file);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, quality)
            .encode_image(&img)
            .map_err(|e| Error::File {
                path: src.to_path_buf(),
                reason: format!("cannot be written as a JPEG of {}x{}: {e}", img.width(), img.height()),
            })?;
        w.into_inner().map_err(|e| io(tmp)(e.into_error()))?;
        Ok(())
    })?;
    Ok(true)
}
