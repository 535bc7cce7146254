//! `alexnet`: the command-line front of alexnet_rs.
use alexnet_rs::data::rng::Rng;
use alexnet_rs::data::stats::Stats;
use alexnet_rs::data::{Dataset, Loader, LoaderConfig, Split, Transform, View};
use alexnet_rs::experiment::{self, Experiment};
use alexnet_rs::image::load_rgb;
use alexnet_rs::optim::{ScheduleKind, UpdateRule};
use alexnet_rs::placement::Placement;
use alexnet_rs::train::{self, Event, TrainConfig};
use alexnet_rs::{info, model, Activation, Config, ConvBackend, Error, Preset, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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
    /// Train a network (default data: Fashion-MNIST from Debian's dataset-fashion-mnist).
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint: top-1/top-5 accuracy on the test split (centre crop or 10 crops).
    Eval(EvalArgs),
    /// Top-5 classes of image files, from a checkpoint.
    Predict(PredictArgs),
    /// Print which device holds each parameter shard under a placement.
    Placement(PlacementArgs),
    /// The paper's ablations at small scale on Fashion-MNIST: relu-vs-tanh (Fig. 1, a four-layer
    /// CNN), lrn, overlap-pool, dropout (the paper network at 63x63); each arm over several seeds.
    /// Writes a run folder per arm and seed and a summary table (<out>/<experiment>.md).
    Experiment(Box<ExperimentArgs>),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
struct ExperimentArgs {
    #[arg(value_parser = PossibleValuesParser::new(Experiment::ALL.map(Experiment::name))
        .map(|s| s.parse::<Experiment>().expect("listed experiment")))]
    experiment: Experiment,
    /// Seeds per arm (seed, seed+1, ...).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// relu-vs-tanh: learning rates tried for each activation (the best is compared)
    /// [default: 0.01,0.03,0.1].
    #[arg(long, value_delimiter = ',')]
    lrs: Vec<f64>,
    /// relu-vs-tanh: the training errors to time (the paper's 25 %, and a stricter one for an
    /// easier dataset).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.15")]
    target_errors: Vec<f64>,
    /// Training settings; unset ones take the experiment's defaults (relu-vs-tanh: cnn4 at 28x28,
    /// 4 epochs, no weight decay, constant lr; the others: paper at 63x63 with PyTorch init, 10k images,
    /// 5 epochs, cosine lr; batch 128, lr 0.01; --out runs/experiments).
    #[command(
        flatten,
        next_help_heading = "Training settings (unset: the experiment's defaults, not the [default]s below)"
    )]
    train: TrainArgs,
}

#[derive(Args)]
struct TrainArgs {
    /// TOML file with any of the options below (flags given here override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run saved in this folder (its newest checkpoint), bit for bit.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Network variant.
    #[arg(long, value_parser = preset_parser())]
    preset: Option<Preset>,
    /// Dataset (image folder, list file or IDX folder) [default: Fashion-MNIST].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Input side in pixels [default: 224].
    #[arg(long)]
    input_size: Option<u32>,
    /// [default: 128]
    #[arg(long)]
    batch_size: Option<usize>,
    /// [default: 90]
    #[arg(long)]
    epochs: Option<u64>,
    /// Initial learning rate [default: 0.01].
    #[arg(long)]
    lr: Option<f64>,
    /// [default: 0.9]
    #[arg(long)]
    momentum: Option<f64>,
    /// [default: 5e-4]
    #[arg(long)]
    weight_decay: Option<f64>,
    /// `paper` (v = m v - wd lr w - lr g; w += v) or `pytorch` [default: paper].
    #[arg(long)]
    update_rule: Option<UpdateRule>,
    /// plateau (/10 when validation error stalls, at most 3 times), step, cosine or constant
    /// [default: plateau].
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// Epochs between drops of the `step` schedule [default: 30].
    #[arg(long)]
    step_epochs: Option<u64>,
    /// [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda:0, cuda:0,cuda:1, cuda:0,cpu or cpu,cpu (two devices: the paper's split)
    /// [default: cpu].
    #[arg(long)]
    devices: Option<String>,
    /// ours, stock or auto [default: auto].
    #[arg(long)]
    conv_backend: Option<String>,
    /// Run folder: metrics.jsonl, epochs.csv, curves.png, classes.json, checkpoints/
    /// [default: runs/train].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also checkpoint every N steps (0: at epoch ends only) [default: 0].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Checkpoints kept, besides the best [default: 3].
    #[arg(long)]
    keep: Option<usize>,
    /// Evaluate every N epochs [default: 1].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Data-loading threads (0: one per core) [default: 0].
    #[arg(long)]
    threads: Option<usize>,
    /// Train on a seeded subset of this many samples.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Evaluate on a seeded subset of this many samples.
    #[arg(long)]
    limit_test: Option<usize>,
    /// Stop after this many steps (with a checkpoint; `--resume` continues).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Stop after this many seconds of training (checkpoint + final evaluation).
    #[arg(long)]
    time_budget: Option<f64>,
    /// Evaluate with the average over 10 crops (the paper's test procedure).
    #[arg(long)]
    ten_crop_eval: bool,
    /// `alexnet stats` file: mean image and PCA eigen-pairs of the training set.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// bfloat16 autocast (meant for CUDA; also runs on the CPU).
    #[arg(long)]
    bf16: bool,
    /// Inputs and conv weights in the channels_last memory format.
    #[arg(long)]
    channels_last: bool,
    /// Ablation: the non-linearity, relu or tanh [default: relu].
    #[arg(long)]
    activation: Option<Activation>,
    /// Ablation: leave out the preset's LRN layers.
    #[arg(long)]
    no_lrn: bool,
    /// Ablation: max-pool window (stride stays 2; 2 = non-overlapping) [default: the preset's 3].
    #[arg(long)]
    pool_kernel: Option<i64>,
    /// Ablation: dropout probability (0 = off) [default: the preset's 0.5].
    #[arg(long)]
    dropout: Option<f64>,
    /// PyTorch's default init for every layer instead of the preset's.
    #[arg(long)]
    torch_init: bool,
}

impl TrainArgs {
    /// The TOML file (if any) with the flags laid over it.
    fn train_config(&self) -> Result<TrainConfig> {
        self.over(TrainConfig::default())
    }

    /// The TOML file if any, else `base`, with the flags laid over it.
    fn over(&self, base: TrainConfig) -> Result<TrainConfig> {
        let mut t = match &self.config {
            Some(p) => TrainConfig::from_toml(p)?,
            None => base,
        };
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f.clone() { t.$f = v; })* };
        }
        set!(
            input_size,
            batch_size,
            epochs,
            lr,
            momentum,
            weight_decay,
            update_rule,
            schedule,
            step_epochs,
            seed,
            devices,
            conv_backend,
            out,
            checkpoint_every,
            keep,
            eval_every,
            threads,
            activation
        );
        if let Some(p) = self.preset {
            t.preset = p.name().into();
        }
        (t.data, t.limit_train, t.limit_test, t.stats) = (
            self.data.clone().or(t.data),
            self.limit_train.or(t.limit_train),
            self.limit_test.or(t.limit_test),
            self.stats.clone().or(t.stats),
        );
        (t.max_steps, t.time_budget_s) = (self.max_steps.or(t.max_steps), self.time_budget.or(t.time_budget_s));
        t.ten_crop_eval |= self.ten_crop_eval;
        t.bf16 |= self.bf16;
        t.channels_last |= self.channels_last;
        t.lrn &= !self.no_lrn;
        t.torch_init |= self.torch_init;
        (t.pool_kernel, t.dropout) = (self.pool_kernel.or(t.pool_kernel), self.dropout.or(t.dropout));
        Ok(t)
    }
}

#[derive(Args)]
struct EvalArgs {
    /// A run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Evaluate on this dataset's test split instead of the run's.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Average the softmax over 10 crops.
    #[arg(long)]
    ten_crop: bool,
    #[arg(long, default_value = "cpu")]
    devices: String,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
}

#[derive(Args)]
struct PredictArgs {
    /// A run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value = "cpu")]
    devices: String,
}

#[derive(Args)]
struct PlacementArgs {
    #[arg(long, default_value = "paper", value_parser = preset_parser())]
    preset: Preset,
    /// One or two devices, e.g. cuda:0,cuda:1 or cpu,cpu.
    #[arg(long, default_value = "cuda:0,cuda:1")]
    devices: String,
    #[arg(long, default_value_t = 1000)]
    num_classes: i64,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Images/s of the data pipeline (decode + resize + crop + flip + PCA noise + normalise).
    Data(BenchDataArgs),
    /// Images/s of our training step (forward, loss, backward, SGD) against the same network in
    /// plain PyTorch eager (benches/train_step.py, run by the venv's python) in the same run.
    Train(BenchTrainArgs),
}

#[derive(Args)]
struct BenchTrainArgs {
    #[arg(long, default_value = "paper", value_parser = preset_parser())]
    preset: Preset,
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Timed steps (median reported), after one warm-up step.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value = "cpu")]
    devices: String,
    /// Python with torch for the eager anchor [default: .venv/bin/python, else python3].
    #[arg(long)]
    python: Option<PathBuf>,
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
        // A head without adaptive pooling is sized for the input (as `alexnet train` does).
        cfg.input_size = size;
        Ok((cfg, size))
    }
}

fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    PossibleValuesParser::new(Preset::CHOICES.map(Preset::name)).map(|s| s.parse().expect("listed preset"))
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
    alexnet_rs::fault::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => run_info(&a),
        Command::Forward(a) => run_forward(&a),
        Command::Stats(a) => run_stats(&a),
        Command::Prepare(a) => run_prepare(&a),
        Command::Bench(BenchCommand::Data(a)) => run_bench_data(&a),
        Command::Bench(BenchCommand::Train(a)) => run_bench_train(&a),
        Command::Train(a) => run_train(&a),
        Command::Eval(a) => run_eval(&a),
        Command::Predict(a) => run_predict(&a),
        Command::Placement(a) => run_placement(&a),
        Command::Experiment(a) => run_experiment(&a),
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
    let tf = Transform::for_preset(cfg.preset, crop, View::Center, None);
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
    let params = model::init_params(&cfg, &Placement::single(Device::Cpu))?;
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
    for (name, _, p) in params.iter_shards().filter(|(n, _, _)| n.ends_with("weight")) {
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

fn run_train(a: &TrainArgs) -> Result<()> {
    let tc = a.train_config()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}, ETA {eta}] {msg}")
            .expect("valid template"),
    );
    // Ctrl-C: finish the step, write a checkpoint, stop.
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_sigint(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    // Above the bar on a terminal; plain stderr lines without one (indicatif drops println of a
    // hidden bar, which would hide every epoch's result in CI or under nohup).
    let say = |msg: &str| {
        if bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            bar.println(msg);
        }
    };
    let mut on_event = |e: &Event| match e {
        Event::Step(r) => {
            bar.set_prefix(r.epoch.to_string());
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} img/s",
                r.loss, r.lr, r.images_per_s
            ));
            if bar.is_hidden() && r.step % 100 == 0 {
                // No terminal (CI, nohup): a plain progress line now and then.
                eprintln!(
                    "epoch {} step {}: loss {:.4}, lr {:.2e}, {:.0} img/s",
                    r.epoch, r.step, r.loss, r.lr, r.images_per_s
                );
            }
        }
        Event::Epoch(r) => {
            say(&format!(
                "epoch {:>3} step {:>7}: train loss {:.4}, val loss {:.4}, top-1 {:.4}, top-5 {:.4}, lr {:.2e}, {:.0} s",
                r.epoch, r.step, r.train_loss, r.val_loss, r.val_top1, r.val_top5, r.lr, r.seconds
            ));
            bar.set_position(0);
        }
        Event::Checkpoint(d) => say(&format!("checkpoint {}", d.display())),
    };
    let batches =
        |tc: &TrainConfig| -> u64 { tc.limit_train.map_or(60000, |n| n as u64) / tc.batch_size.max(1) as u64 };
    bar.set_length(batches(&tc));
    let result = train::train(&tc, a.resume.as_deref(), &mut on_event, &|| STOP.load(Ordering::SeqCst))?;
    bar.finish_and_clear();
    // A resumed run without --out continues in its own folder.
    let out = match (&a.resume, &a.out) {
        (Some(run), None) => run.clone(),
        _ => tc.out.clone(),
    };
    println!(
        "final: top-1 {:.4}, top-5 {:.4}, loss {:.4} on {} samples; metrics, curves.png and checkpoints in {}",
        result.top1,
        result.top5,
        result.loss,
        result.samples,
        out.display()
    );
    Ok(())
}

fn run_experiment(a: &ExperimentArgs) -> Result<()> {
    if a.train.resume.is_some() {
        return Err(Error::Config(
            "--resume does not apply to experiments: rerunning the same command reuses finished runs".into(),
        ));
    }
    let exp = a.experiment;
    let tc = a.train.over(exp.defaults())?;
    let lrs = if a.lrs.is_empty() && a.train.lr.is_none() {
        exp.default_lrs()
    } else {
        a.lrs.clone()
    };
    let summary = experiment::run(exp, &tc, a.seeds, &lrs, &a.target_errors)?;
    println!("{}", summary.markdown);
    println!("summary: {}", tc.out.join(format!("{}.md", exp.name())).display());
    Ok(())
}

fn run_eval(a: &EvalArgs) -> Result<()> {
    let r = train::evaluate_checkpoint(
        &a.checkpoint,
        a.data.clone(),
        a.ten_crop,
        a.limit,
        a.batch_size,
        &a.devices,
    )?;
    let view = if a.ten_crop { "10 crops" } else { "centre crop" };
    println!(
        "{} samples ({view}): top-1 {:.4}, top-5 {:.4}, loss {:.4}",
        r.samples, r.top1, r.top5, r.loss
    );
    Ok(())
}

fn run_predict(a: &PredictArgs) -> Result<()> {
    let t = train::load_trained(&a.checkpoint, &a.devices)?;
    for (path, top) in a.images.iter().zip(train::predict(&t, &a.images)?) {
        println!("{}:", path.display());
        for (i, name, p) in top {
            println!("  {p:>7.4}  {i:>4}  {name}");
        }
    }
    Ok(())
}

fn run_placement(a: &PlacementArgs) -> Result<()> {
    let cfg = Config::preset(a.preset, a.num_classes)?;
    print!("{}", Placement::parse(&a.devices)?.table(&cfg)?);
    Ok(())
}

fn run_bench_train(a: &BenchTrainArgs) -> Result<()> {
    let cfg = Config::preset(a.preset, 1000)?;
    let placement = Placement::parse(&a.devices)?;
    placement.check_available()?;
    let dev = placement.first();
    tch::manual_seed(0);
    let params = model::init_params(&cfg, &placement)?;
    let mut sgd = alexnet_rs::optim::Sgd::new(&params, UpdateRule::Pytorch, 0.9, 5e-4);
    let s = cfg.input_size;
    let x = Tensor::randn([a.batch, 3, s, s], (Kind::Float, dev));
    let y = Tensor::randint(1000, [a.batch], (Kind::Int64, dev));
    let mut step = || -> Result<f64> {
        let t0 = Instant::now();
        let loss = model::forward(&cfg, &params, &x, true)?.f_cross_entropy_loss(
            &y,
            None::<Tensor>,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?;
        loss.f_backward()?;
        sgd.step(&params, 1e-3)?;
        if let Device::Cuda(i) = dev {
            tch::Cuda::synchronize(i as i64);
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    step()?;
    let mut times = (0..a.steps.max(1)).map(|_| step()).collect::<Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    let ours = a.batch as f64 / times[times.len() / 2];
    let python = a.python.clone().unwrap_or_else(|| {
        let venv = PathBuf::from(".venv/bin/python");
        if venv.is_file() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/train_step.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args([
            "--preset",
            a.preset.name(),
            "--batch",
            &a.batch.to_string(),
            "--steps",
            &a.steps.to_string(),
        ])
        .args(["--device", &alexnet_rs::placement::device_name(dev)])
        .output()
        .map_err(|source| Error::Io {
            path: python.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let eager: f64 = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["images_per_s"].as_f64())
        .ok_or_else(|| Error::Config(format!("unexpected output of {}: {text}", script.display())))?;
    println!(
        "preset {} batch {} on {}: alexnet_rs {ours:.2} images/s, PyTorch eager {eager:.2} images/s, ratio {:.2}x",
        a.preset,
        a.batch,
        a.devices,
        ours / eager
    );
    Ok(())
}
