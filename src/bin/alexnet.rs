//! `alexnet`: the command-line front of alexnet_rs.
use alexnet_rs::image::{load_rgb, to_tensor, IMAGENET_MEAN, IMAGENET_STD};
use alexnet_rs::{info, model, Config, ConvBackend, Error, Preset, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => run_info(&a),
        Command::Forward(a) => run_forward(&a),
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
    let resize = crop * 256 / 224;
    let mut images = Vec::with_capacity(a.images.len());
    let mut labels = Vec::with_capacity(a.images.len());
    for path in &a.images {
        let img = load_rgb(path)?;
        images.push(to_tensor(&img, resize, crop, IMAGENET_MEAN, IMAGENET_STD));
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
