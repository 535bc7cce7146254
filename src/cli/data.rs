//! `alexnet stats`, `alexnet prepare` and `alexnet bench data`: datasets and the data pipeline.
use super::{preset_parser, progress_bar, with_threads};
use crate::config::{Preset, MAX_INPUT};
use crate::data::stats::Stats;
use crate::data::{Dataset, Loader, LoaderConfig, Split, Transform, View};
use crate::error::{Error, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct DataArgs {
    /// Dataset: an image folder (one subfolder per class), a list file (`path label` lines),
    /// or a folder of IDX files (Fashion-MNIST).
    data: PathBuf,
    /// Decoding threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Use only this many samples (a seeded random subset).
    #[arg(long)]
    limit: Option<usize>,
}

impl DataArgs {
    fn open(&self, split: Split) -> Result<Dataset> {
        if self.limit == Some(0) {
            return Err(Error::Config("--limit must be >= 1".into()));
        }
        let ds = Dataset::open(&self.data, split)?;
        Ok(match self.limit {
            Some(n) => ds.subset(n, 0),
            None => ds,
        })
    }
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Side of the resized square centre crops the statistics are taken over.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT))]
    size: u32,
    /// Output file.
    #[arg(long, default_value = "stats.safetensors")]
    out: PathBuf,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Source image folder.
    src: PathBuf,
    /// Destination folder (same layout; JPEG files).
    dst: PathBuf,
    /// Shorter side after resizing.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT))]
    size: u32,
    /// JPEG quality of the outputs.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
pub struct BenchDataArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Preset whose transform recipe to run.
    #[arg(long, default_value = "paper", value_parser = preset_parser())]
    preset: Preset,
    /// Crop side.
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT))]
    crop: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Timed passes over the data.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: u64,
    /// Untimed passes first (threads started, files in the page cache), as the torchvision side
    /// of benches/data_loader.py gets.
    #[arg(long, default_value_t = 1)]
    warmup_epochs: u64,
}

pub fn stats(a: &StatsArgs) -> Result<()> {
    with_threads(a.data.threads, || stats_on_pool(a))
}

fn stats_on_pool(a: &StatsArgs) -> Result<()> {
    // The output's name and folder before the (long) computation, not after it.
    crate::files::check_file_target(&a.out, "statistics", "stats.safetensors")?;
    crate::files::check_not_input(&a.out, &[&a.data.data])?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::create_dir(dir)?;
    }
    let ds = a.data.open(Split::Train)?;
    let bar = progress_bar(ds.len() as u64, "stats");
    let stats = Stats::compute(&ds, a.size, &|| bar.inc(1))?;
    bar.finish();
    stats.save(&a.out)?;
    crate::say::outln!(
        "{} images ({} unreadable, skipped) at {}x{}: channel mean {:?}, std {:?}, eigenvalues {:?} -> {}",
        stats.images,
        stats.skipped,
        a.size,
        a.size,
        stats.channel_mean,
        stats.channel_std,
        stats.eigval,
        a.out.display()
    )?;
    Ok(())
}

pub fn prepare(a: &PrepareArgs) -> Result<()> {
    with_threads(a.threads, || prepare_on_pool(a))
}

fn prepare_on_pool(a: &PrepareArgs) -> Result<()> {
    let bar = progress_bar(0, "prepare");
    let report = crate::data::prepare::prepare(&a.src, &a.dst, a.size, a.quality, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    for (_, reason) in &report.failed {
        crate::say::line(&format!("failed: {reason}")); // it names the file
    }
    crate::say::outln!(
        "{} written, {} already there, {} failed -> {}",
        report.written,
        report.skipped_existing,
        report.failed.len(),
        a.dst.display()
    )?;
    if report.orphans > 0 {
        crate::say::outln!(
            "note: {} image(s) in {} have no source in {} (removed or renamed since?): left as they are",
            report.orphans,
            a.dst.display(),
            a.src.display()
        )?;
    }
    if !report.failed.is_empty() {
        let total = report.written + report.skipped_existing + report.failed.len();
        return Err(Error::File {
            path: a.src.clone(),
            reason: format!(
                "{} of {total} files could not be prepared (listed above)",
                report.failed.len()
            ),
        });
    }
    Ok(())
}

pub fn bench(a: &BenchDataArgs) -> Result<()> {
    let ds = a.data.open(Split::Train)?;
    let tf = Transform::for_preset(a.preset, a.crop, View::Train, None);
    let cfg = LoaderConfig {
        batch_size: a.batch_size,
        threads: a.data.threads,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(ds, tf, cfg)?;
    let threads = if a.data.threads == 0 {
        rayon::current_num_threads()
    } else {
        a.data.threads
    };
    for epoch in 0..a.warmup_epochs {
        for b in loader.epoch(epoch) {
            b?;
        }
    }
    let mut n = 0u64;
    let t0 = Instant::now();
    let mut skipped = 0;
    for epoch in a.warmup_epochs..a.warmup_epochs + a.epochs {
        let mut batches = loader.epoch(epoch);
        for b in batches.by_ref() {
            n += b?.labels.size()[0] as u64;
        }
        skipped += batches.skipped();
    }
    if n == 0 && skipped > 0 {
        // As `train` and `stats` say it: a rate of 0 images/s measured nothing.
        return Err(Error::File {
            path: loader.dataset().origin.clone(),
            reason: format!("no image could be read ({skipped} skipped): nothing to time"),
        });
    }
    let secs = t0.elapsed().as_secs_f64();
    crate::say::outln!(
        "{n} images in {secs:.2} s with {threads} threads: {:.1} images/s ({:.1} per thread), {skipped} skipped",
        n as f64 / secs,
        n as f64 / secs / threads as f64
    )?;
    crate::say::outln!(
        "{{\"images\": {n}, \"seconds\": {secs:.4}, \"threads\": {threads}, \"images_per_s\": {:.2}}}",
        n as f64 / secs
    )?;
    Ok(())
}
