//! `alexnet info`, `alexnet forward`, `alexnet placement`: the network itself.
use super::preset_parser;
use crate::config::{Config, Preset};
use crate::conv::ConvBackend;
use crate::data::{Transform, View};
use crate::error::{Error, Result};
use crate::placement::Placement;
use crate::settings::choice;
use crate::{info, model, train};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Args)]
pub struct PresetArgs {
    /// Network variant.
    #[arg(long, default_value = "paper", value_parser = preset_parser())]
    preset: Preset,
    /// Side of the square input image in pixels [default: the preset's: 224; caffe 227, cnn4 32].
    #[arg(long)]
    input_size: Option<i64>,
    /// Number of output classes of the last layer.
    #[arg(long, default_value_t = 1000)]
    num_classes: i64,
}

impl PresetArgs {
    /// The preset's network for square inputs of `--input-size` (default: the preset's).
    fn config(&self) -> Result<(Config, i64)> {
        let mut cfg = Config::preset(self.preset, self.num_classes)?;
        let size = self.input_size.unwrap_or(cfg.input_size);
        if size < 1 {
            return Err(Error::Config(format!("--input-size must be positive, got {size}")));
        }
        // Within the data pipeline's limit, and large enough for every stage.
        cfg.spatial_sizes(size)?;
        // A head without adaptive pooling is sized for the input (as `alexnet train` does).
        cfg.input_size = size;
        Ok((cfg, size))
    }
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    preset: PresetArgs,
}

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    preset: PresetArgs,
    /// One or two devices to run on, e.g. cuda:0 or cuda:0,cuda:1 (the paper's two-GPU split).
    #[arg(long, default_value = "cpu")]
    devices: String,
    /// Convolution implementation on CUDA: ours (our kernels), stock (cuDNN), or auto (the
    /// faster per shape, timed once). On the CPU all three are ATen's convolution.
    #[arg(long, default_value = "auto", value_parser = choice::<ConvBackend>(ConvBackend::ALL.map(ConvBackend::name)))]
    conv_backend: ConvBackend,
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

#[derive(Args)]
pub struct PlacementArgs {
    #[command(flatten)]
    preset: PresetArgs,
    /// One or two devices, e.g. cuda:0,cuda:1 or cpu,cpu.
    #[arg(long, default_value = "cuda:0,cuda:1")]
    devices: String,
}

pub fn info(a: &InfoArgs) -> Result<()> {
    let (cfg, size) = a.preset.config()?;
    crate::say::out(&info::render(&cfg, size)?)?;
    Ok(())
}

pub fn placement(a: &PlacementArgs) -> Result<()> {
    let (cfg, _) = a.preset.config()?;
    crate::say::out(&Placement::parse(&a.devices)?.table(&cfg)?)?;
    Ok(())
}

fn label_from_name(path: &Path) -> Option<i64> {
    path.file_stem()?.to_str()?.rsplit_once('_')?.1.parse().ok()
}

/// The images as one batch `(N, 3, S, S)` and their labels.
fn batch(a: &ForwardArgs, cfg: &Config, size: i64) -> Result<(Tensor, Vec<i64>)> {
    let crop = u32::try_from(size).map_err(|_| Error::Config(format!("--input-size {size} is too large")))?;
    let tf = Transform::for_preset(cfg.preset, crop, View::Center, None);
    let mut images = Vec::with_capacity(a.images.len());
    let mut labels = Vec::with_capacity(a.images.len());
    for path in &a.images {
        images.push(train::image_tensor(&tf, path)?);
        let label = a.label.or_else(|| label_from_name(path)).unwrap_or(0);
        if !(0..cfg.num_classes()).contains(&label) {
            let whose = match a.label {
                Some(_) => "--label".to_string(),
                None => format!("the label in the name of {}", path.display()),
            };
            return Err(Error::Config(format!(
                "{whose} ({label}) is outside 0..{} (--num-classes)",
                cfg.num_classes()
            )));
        }
        labels.push(label);
    }
    Ok((Tensor::f_stack(&images, 0)?, labels))
}

pub fn forward(a: &ForwardArgs) -> Result<()> {
    let (mut cfg, size) = a.preset.config()?;
    cfg.conv_backend = a.conv_backend;
    let placement = Placement::parse(&a.devices)?;
    placement.check_available()?;
    let (x, labels) = batch(a, &cfg, size)?;
    // The logits are gathered on the first device.
    let x = x.f_to_device(placement.first())?;
    let y = Tensor::from_slice(&labels).f_to_device(placement.first())?;
    tch::manual_seed(a.seed);
    let params = model::init_params(&cfg, &placement)?;
    crate::say::outln!(
        "preset {}: {} parameters, batch {:?}, labels {:?}",
        cfg.preset,
        info::group_digits(cfg.num_params()),
        x.size(),
        labels
    )?;
    let t0 = Instant::now();
    let logits = model::forward(&cfg, &params, &x, true)?;
    let loss = logits
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss(&y, None::<Tensor>, tch::Reduction::Mean, -100)?;
    placement.synchronize();
    let t_fwd = t0.elapsed();
    let t1 = Instant::now();
    loss.f_backward()?;
    placement.synchronize();
    let t_bwd = t1.elapsed();
    let loss_v = loss.double_value(&[]);
    crate::say::outln!(
        "  logits {:?}, loss {loss_v:.4} (ln {} = {:.4} for an untrained net), forward {:.2} s, backward {:.2} s (one cold pass: start-up and conv tuning included)",
        logits.size(),
        cfg.num_classes(),
        (cfg.num_classes() as f64).ln(),
        t_fwd.as_secs_f64(),
        t_bwd.as_secs_f64()
    )?;
    let mut all_finite = loss_v.is_finite();
    for (name, _, p) in params.iter_shards().filter(|(n, _, _)| n.ends_with("weight")) {
        let g = p.grad();
        let norm = if g.defined() {
            g.norm().double_value(&[])
        } else {
            f64::NAN
        };
        all_finite &= norm.is_finite();
        crate::say::outln!("  grad |{name}| = {norm:.3e}")?;
    }
    if !all_finite {
        return Err(Error::Shape("the loss or a gradient is not finite".into()));
    }
    Ok(())
}
