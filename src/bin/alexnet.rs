//! `alexnet`: the command-line front of alexnet_rs.
use alexnet_rs::data::rng::Rng;
use alexnet_rs::data::stats::Stats;
use alexnet_rs::data::{Dataset, Loader, LoaderConfig, Normalize, Split, Transform, View};
use alexnet_rs::image::{load_rgb, IMAGENET_MEAN, IMAGENET_STD};
use alexnet_rs::{info, model, Config, ConvBackend, Error, Preset, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser)]
#[command(
    name = "alexnet",
    version,
    about = "AlexNet (2012) on libtorch: the paper's two-tower network, torchvision's and Caffe's",
    long_about = "AlexNet (Krizhevsky, Sutskever & Hinton, 2012) on libtorch, with our own LRN kernel.\n\
                  Presets: `paper` (the 2012 two-tower network: groups 2, LRN k=2), `torchvision` \n\
                  (weight-compatible with torchvision.models.alexnet) and `caffe` (BVLC AlexNet)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print each layer's output shape, parameter count and multiply-accumulates, and the totals.
    Info(InfoArgs),
    /// Run a forward and a backward pass of a freshly initialised network on real images, and
    /// report the loss, the gradient norms and the time taken (a smoke test of the whole stack).
    Forward(ForwardArgs),
    /// Compute a training set's per-pixel mean image, channel mean/std and RGB eigen-pairs (for
    /// PCA colour noise) and save them as safetensors.
    Stats(StatsArgs),
    /// Pre-resize every image of a dataset (shorter side to --size) into DST, in parallel;
    /// resumable: files already in DST are skipped.
    Prepare(PrepareArgs),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Images/s of the data pipeline (decode + resize + crop + flip + PCA noise + normalise).
    Data(BenchDataArgs),
}

#[derive(Args)]
struct DataArgs {
    /// Dataset: an image folder (one subfolder per class), a list file (`path label` lines),
    /// or a folder of IDX files (Fashion-MNIST).
    data: PathBuf,
    /// Decoding threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Use only this many samples (a seeded random subset).
    #[arg(long)]
    limit: Option<usize>,
}

impl DataArgs {
    fn open(&self, split: Split) -> Result<Dataset> {
        let ds = Dataset::open(&self.data, split)?;
        Ok(match self.limit {
            Some(n) => ds.subset(n, 0),
            None => ds,
        })
    }
}

#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Side of the resized square centre crops the statistics are taken over.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Output file.
    #[arg(long, default_value = "stats.safetensors")]
    out: PathBuf,
}

#[derive(Args)]
struct PrepareArgs {
    /// Source image folder.
    src: PathBuf,
    /// Destination folder (same layout; JPEG files).
    dst: PathBuf,
    /// Shorter side after resizing.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// JPEG quality of the outputs.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// Threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct BenchDataArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Preset whose transform recipe to run.
    #[arg(long, default_value = "paper", value_parser = preset_parser())]
    preset: Preset,
    /// Crop side.
    #[arg(long, default_value_t = 224)]
    crop: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
}

#[derive(Args)]
struct PresetArgs {
    /// Network variant.
    #[arg(long, default_value = "paper", value_parser = preset_parser())]
    preset: Preset,
    /// Side of the square input image in pixels [default: the preset's, 224 or 227 for caffe].
    #[arg(long)]
    input_size: Option<i64>,
    /// Number of output classes of the last layer.
    #[arg(long, default_value_t = 1000)]
    num_classes: i64,
    /// Convolution implementation: ours (our CUDA kernels), stock (ATen/cuDNN), or auto (the
    /// faster per shape on CUDA, timed once; stock on CPU).
    #[arg(long, default_value = "auto", value_parser = backend_parser())]
    conv_backend: ConvBackend,
}

impl PresetArgs {
    fn config(&self) -> Result<(Config, i64)> {
        let mut cfg = Config::preset(self.preset, self.num_classes)?;
        cfg.conv_backend = self.conv_backend;
        let size = self.input_size.unwrap_or(cfg.input_size);
        if size < 1 {
            return Err(Error::Config(format!("--input-size must be positive, got {size}")));
        }
        Ok((cfg, size))
    }
}

fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    PossibleValuesParser::new(Preset::ALL.map(Preset::name)).map(|s| s.parse().expect("listed preset"))
}

fn backend_parser() -> impl TypedValueParser<Value = ConvBackend> {
    PossibleValuesParser::new(ConvBackend::ALL.map(ConvBackend::name)).map(|s| s.parse().expect("listed backend"))
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    preset: PresetArgs,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    preset: PresetArgs,
    /// Image files (JPEG, PNG); they form one batch.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Seed of the weight initialisation.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Target class of every image for the loss [default: the number after the last `_` in the
    /// file name (as in `imagenet_00_243.jpg`), else 0].
    #[arg(long)]
    label: Option<i64>,
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`alexnet info | head`) as other Unix tools do, instead of
    // panicking in println!.
    // SAFETY: restoring a default signal disposition at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => run_info(&a),
        Command::Forward(a) => run_forward(&a),
        Command::Stats(a) => run_stats(&a),
        Command::Prepare(a) => run_prepare(&a),
        Command::Bench(BenchCommand::Data(a)) => run_bench_data(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_info(a: &InfoArgs) -> Result<()> {
    let (cfg, size) = a.preset.config()?;
    print!("{}", info::render(&cfg, size)?);
    Ok(())
}

fn label_from_name(path: &std::path::Path) -> Option<i64> {
    path.file_stem()?.to_str()?.rsplit('_').next()?.parse().ok()
}

fn run_forward(a: &ForwardArgs) -> Result<()> {
    let (cfg, size) = a.preset.config()?;
    let crop = u32::try_from(size).map_err(|_| Error::Config(format!("--input-size {size} is too large")))?;
    let tf = Transform {
        resize: crop * 256 / 224,
        square: false,
        crop,
        view: View::Center,
        pca: None,
        normalize: Normalize::MeanStd {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        },
    };
    let mut images = Vec::with_capacity(a.images.len());
    let mut labels = Vec::with_capacity(a.images.len());
    for path in &a.images {
        let img = load_rgb(path)?;
        let mut chw = vec![0f32; tf.view_len()];
        tf.apply(&img, &mut Rng::new(0), &mut chw).map_err(|e| Error::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        images.push(Tensor::from_slice(&chw).view([3, size, size]));
        let label = a.label.or_else(|| label_from_name(path)).unwrap_or(0);
        if !(0..cfg.num_classes()).contains(&label) {
            return Err(Error::Config(format!(
                "label {label} of {} is outside 0..{}",
                path.display(),
                cfg.num_classes()
            )));
        }
        labels.push(label);
    }
    let x = Tensor::f_stack(&images, 0)?;
    let y = Tensor::from_slice(&labels);

    tch::manual_seed(a.seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let params = model::init_params(&cfg, &vs.root())?;
    println!(
        "preset {}: {} parameters, batch {:?}, labels {:?}",
        cfg.preset,
        info::group_digits(cfg.num_params()),
        x.size(),
        labels
    );

    let t0 = Instant::now();
    let logits = model::forward(&cfg, &params, &x, true)?;
    let loss = logits
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss(&y, None::<Tensor>, tch::Reduction::Mean, -100)?;
    let t_fwd = t0.elapsed();
    let t1 = Instant::now();
    loss.f_backward()?;
    let t_bwd = t1.elapsed();

    let loss_v = loss.double_value(&[]);
    println!(
        "  logits {:?}, loss {loss_v:.4} (ln {} = {:.4} for an untrained net), forward {:.2} s, backward {:.2} s",
        logits.size(),
        cfg.num_classes(),
        (cfg.num_classes() as f64).ln(),
        t_fwd.as_secs_f64(),
        t_bwd.as_secs_f64()
    );
    let mut all_finite = loss_v.is_finite();
    for (name, p) in params.iter().filter(|(n, _)| n.ends_with("weight")) {
        let g = p.grad();
        let norm = if g.defined() {
            g.norm().double_value(&[])
        } else {
            f64::NAN
        };
        all_finite &= norm.is_finite();
        println!("  grad |{name}| = {norm:.3e}");
    }
    if !all_finite {
        return Err(Error::Shape("the loss or a gradient is not finite".into()));
    }
    Ok(())
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed_precise}}, ETA {{eta}}] {{per_sec}}"
        ))
        .expect("valid template"),
    );
    bar
}

fn global_threads(threads: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::Config(format!("cannot start {threads} threads: {e}")))
}

fn run_stats(a: &StatsArgs) -> Result<()> {
    global_threads(a.data.threads)?;
    let ds = a.data.open(Split::Train)?;
    let bar = progress_bar(ds.len() as u64, "stats");
    let stats = Stats::compute(&ds, a.size, &|| bar.inc(1))?;
    bar.finish();
    stats.save(&a.out)?;
    println!(
        "{} images ({} unreadable, skipped) at {}x{}: channel mean {:?}, std {:?}, eigenvalues {:?} -> {}",
        stats.images,
        stats.skipped,
        a.size,
        a.size,
        stats.channel_mean,
        stats.channel_std,
        stats.eigval,
        a.out.display()
    );
    Ok(())
}

fn run_prepare(a: &PrepareArgs) -> Result<()> {
    global_threads(a.threads)?;
    let bar = progress_bar(0, "prepare");
    let report = alexnet_rs::data::prepare::prepare(&a.src, &a.dst, a.size, a.quality, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    for (f, reason) in &report.failed {
        eprintln!("failed: {}: {reason}", f.display());
    }
    println!(
        "{} written, {} already there, {} failed -> {}",
        report.written,
        report.skipped_existing,
        report.failed.len(),
        a.dst.display()
    );
    Ok(())
}

fn run_bench_data(a: &BenchDataArgs) -> Result<()> {
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
    let images = AtomicU64::new(0);
    let t0 = Instant::now();
    let mut skipped = 0;
    for epoch in 0..a.epochs {
        let mut batches = loader.epoch(epoch);
        for b in batches.by_ref() {
            images.fetch_add(b?.labels.size()[0] as u64, Ordering::Relaxed);
        }
        skipped += batches.skipped();
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = images.load(Ordering::Relaxed);
    println!(
        "{n} images in {secs:.2} s with {threads} threads: {:.1} images/s ({:.1} per thread), {skipped} skipped",
        n as f64 / secs,
        n as f64 / secs / threads as f64
    );
    println!(
        "{{\"images\": {n}, \"seconds\": {secs:.4}, \"threads\": {threads}, \"images_per_s\": {:.2}}}",
        n as f64 / secs
    );
    Ok(())
}
