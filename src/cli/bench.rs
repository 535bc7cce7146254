//! `alexnet bench train`: our training step against the same network in PyTorch eager, measured
//! in the same run.
use super::preset_parser;
use crate::config::{Config, Preset};
use crate::error::{Error, Result};
use crate::model;
use crate::optim::{Sgd, UpdateRule};
use crate::placement::{self, Placement};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Args)]
pub struct BenchTrainArgs {
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

pub fn train(a: &BenchTrainArgs) -> Result<()> {
    let cfg = Config::preset(a.preset, 1000)?;
    let placement = Placement::parse(&a.devices)?;
    placement.check_available()?;
    let dev = placement.first();
    tch::manual_seed(0);
    let params = model::init_params(&cfg, &placement)?;
    let mut sgd = Sgd::new(&params, UpdateRule::Pytorch, 0.9, 5e-4);
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
    let eager = eager_images_per_s(a, dev)?;
    println!(
        "preset {} batch {} on {}: alexnet_rs {ours:.2} images/s, PyTorch eager {eager:.2} images/s, ratio {:.2}x",
        a.preset,
        a.batch,
        a.devices,
        ours / eager
    );
    Ok(())
}

/// The PyTorch eager anchor (benches/train_step.py, run by the venv's python): images/s.
fn eager_images_per_s(a: &BenchTrainArgs, dev: Device) -> Result<f64> {
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
        .args(["--device", &placement::device_name(dev)])
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
    text.lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["images_per_s"].as_f64())
        .ok_or_else(|| Error::Config(format!("unexpected output of {}: {text}", script.display())))
}
