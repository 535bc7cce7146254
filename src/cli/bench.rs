//! `alexnet bench train`: our training step against the same network in PyTorch eager and under
//! `torch.compile` (inductor), measured in the same run. Each Python side runs in a process of
//! its own (benches/train_step.py), so every side's peak resident memory is its own.
use super::preset_parser;
use crate::config::{Config, Preset};
use crate::error::{io, Error, Result};
use crate::model;
use crate::optim::{Sgd, UpdateRule};
use crate::placement::{self, Placement};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Side {
    /// Our training step (this process).
    Ours,
    /// PyTorch eager (benches/train_step.py).
    Eager,
    /// torch.compile(model), inductor's default mode (benches/train_step.py --mode compile).
    Compile,
    /// PyTorch eager inside `alexnet_rs.ops.cpu_cache()`, our caching CPU allocator (not an
    /// anchor: what the allocator alone gives a user's own loop; benches/train_step.py --cpu-cache).
    EagerCached,
}

#[derive(Args)]
pub struct BenchTrainArgs {
    #[arg(long, default_value = "paper", value_parser = preset_parser())]
    preset: Preset,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(i64).range(1..))]
    batch: i64,
    /// Timed steps (median reported), after one warm-up step.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    #[arg(long, default_value = "cpu")]
    devices: String,
    /// Intra-op threads of every side (torch.set_num_threads) [default: torch's, one per core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=crate::data::loader::MAX_THREADS as i64))]
    threads: Option<u32>,
    /// The sides to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ours,eager,compile")]
    sides: Vec<Side>,
    /// Our side without the caching CPU allocator the training loop uses (kernels/cpu_cache.cpp).
    #[arg(long)]
    no_cpu_cache: bool,
    /// Our side with the fully connected layers' SGD update after backward instead of inside it
    /// (kernels/linear_sgd_cpu.cpp, which the training loop uses at batches up to 32).
    #[arg(long)]
    no_fc_update_in_backward: bool,
    /// Our side with inputs and conv weights stored channels_last (as `alexnet train
    /// --channels-last`).
    #[arg(long)]
    channels_last: bool,
    /// Python with torch for the anchors [default: $ALEXNET_PYTHON (the wheel's `alexnet`: its own
    /// interpreter), else $VIRTUAL_ENV's, ./.venv's, the build's .venv's, else python3].
    #[arg(long)]
    python: Option<PathBuf>,
}

/// One side's measurement.
struct Measured {
    side: Side,
    images_per_s: f64,
    seconds_per_step: f64,
    compile_s: f64,
    peak_rss_mib: f64,
    base_rss_mib: f64,
}

pub fn train(a: &BenchTrainArgs) -> Result<()> {
    check(a)?;
    if let Some(n) = a.threads {
        tch::set_num_threads(n as i32);
    }
    let threads = tch::get_num_threads();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let mut results = Vec::new();
    for &side in &a.sides {
        results.push(match side {
            Side::Ours => ours(a)?,
            Side::Eager | Side::Compile | Side::EagerCached => python_side(a, side, threads)?,
        });
    }
    let cfg = Config::preset(a.preset, 1000)?;
    // Our side's options that are not the training loop's defaults: a run with them is another
    // measurement, told apart in the header and the JSON line.
    let options: Vec<&str> = [
        (a.no_cpu_cache, "--no-cpu-cache"),
        (a.no_fc_update_in_backward, "--no-fc-update-in-backward"),
        (a.channels_last, "--channels-last"),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
    .collect();
    let ours_with = if options.is_empty() || !a.sides.contains(&Side::Ours) {
        String::new()
    } else {
        format!(", ours with {}", options.join(" "))
    };
    crate::say::outln!(
        "preset {}, batch {}, {s}x{s}, on {}, {threads} threads, median of {} steps{ours_with}, load average {load}",
        a.preset,
        a.batch,
        a.devices,
        a.steps,
        s = cfg.input_size
    )?;
    crate::say::outln!(
        "| side | images/s | s/step | ours / side | peak RSS (MiB) | RSS at start (MiB) | compile (s) |"
    )?;
    crate::say::outln!("|---|---|---|---|---|---|---|")?;
    let ours_rate = results.iter().find(|m| m.side == Side::Ours).map(|m| m.images_per_s);
    for m in &results {
        let ratio = ours_rate.map_or("-".to_string(), |o| format!("{:.2}x", o / m.images_per_s));
        let compile = if m.side == Side::Compile {
            format!("{:.1}", m.compile_s)
        } else {
            "-".into()
        };
        crate::say::outln!(
            "| {} | {:.2} | {:.3} | {ratio} | {:.0} | {:.0} | {compile} |",
            side_name(m.side),
            m.images_per_s,
            m.seconds_per_step,
            m.peak_rss_mib,
            m.base_rss_mib
        )?;
    }
    // One machine-readable line last.
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|m| {
            serde_json::json!({
                "side": side_name(m.side), "images_per_s": m.images_per_s, "seconds_per_step": m.seconds_per_step,
                "compile_s": m.compile_s, "peak_rss_mib": m.peak_rss_mib, "base_rss_mib": m.base_rss_mib,
            })
        })
        .collect();
    crate::say::outln!(
        "{}",
        serde_json::json!({"preset": a.preset.name(), "batch": a.batch, "threads": threads, "load": load,
            "ours_options": options, "sides": json})
    )?;
    Ok(())
}

/// The arguments' checks, before anything is measured.
fn check(a: &BenchTrainArgs) -> Result<()> {
    if a.steps < 5 {
        crate::say::line("note: fewer than 5 timed steps; medians of so few are noisy");
    }
    if let Some(i) = (1..a.sides.len()).find(|&i| a.sides[..i].contains(&a.sides[i])) {
        // It measured the side twice and reported a ratio of it to itself.
        return Err(Error::Config(format!(
            "--sides lists {} twice",
            a.sides[i]
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string())
        )));
    }
    let anchors = a.sides.iter().any(|&s| s != Side::Ours);
    if anchors && a.preset == Preset::Cnn4 {
        // Before any measurement: the anchors' PyTorch networks are AlexNet's presets only.
        return Err(Error::Config(
            "the PyTorch anchors (benches/torch_alexnet.py) have the paper, torchvision and caffe networks, not \
             cnn4: measure --sides ours alone, or another --preset"
                .into(),
        ));
    }
    let placement = Placement::parse(&a.devices)?;
    if a.sides.contains(&Side::EagerCached) && placement.first() != Device::Cpu {
        // cpu_cache() serves CPU tensors alone: on a GPU the side is eager again, under another name.
        return Err(Error::Config(format!(
            "--sides eager-cached measures our caching CPU allocator, and --devices {} is not the CPU",
            a.devices
        )));
    }
    if anchors && placement.is_split() {
        // The anchors run on the first device alone: the ratio compared two devices with one.
        return Err(Error::Config(format!(
            "--devices {} splits ours over two devices, and the PyTorch anchors run on one: measure --sides ours \
             alone, or give one device",
            a.devices
        )));
    }
    // These were found after our side had been measured (minutes), or by the anchor's traceback.
    placement.check_available()?;
    if anchors {
        anchor_script()?;
        let python = a.python.clone().unwrap_or_else(default_python);
        // eager-cached runs the steps in alexnet_rs.ops.cpu_cache(): the wheel, beside torch.
        let (import, needs) = if a.sides.contains(&Side::EagerCached) {
            (
                "import torch, alexnet_rs.ops; alexnet_rs.ops.cpu_cache",
                "torch and alexnet_rs (eager-cached)",
            )
        } else {
            ("import torch", "torch")
        };
        let out = std::process::Command::new(&python)
            .args(["-c", import])
            .output()
            .map_err(io(&python))?;
        if !out.status.success() {
            return Err(Error::Config(format!(
                "{} cannot import {needs}, which the PyTorch anchors need (--python names another interpreter): {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// The script that measures a PyTorch anchor (benches/train_step.py, in the repository).
fn anchor_script() -> Result<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/train_step.py");
    if !script.is_file() {
        return Err(Error::Config(format!(
            "the PyTorch anchors run the repository's {} (with benches/torch_alexnet.py), which is not here \
             (the wheel does not carry the benches): run it from a checkout, or measure --sides ours alone",
            script.display()
        )));
    }
    Ok(script)
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::Ours => "alexnet_rs",
        Side::Eager => "PyTorch eager",
        Side::Compile => "torch.compile",
        Side::EagerCached => "PyTorch eager in cpu_cache()",
    }
}

/// Our step in this process: forward, cross-entropy, backward, SGD (PyTorch's rule, as the anchors).
fn ours(a: &BenchTrainArgs) -> Result<Measured> {
    let base_rss_mib = rss_mib("VmRSS");
    // As the training loop does (src/train/run.rs), unless measuring without it.
    let _cache = (!a.no_cpu_cache).then(crate::ops::CpuCacheScope::new);
    let cfg = Config::preset(a.preset, 1000)?;
    let placement = Placement::parse(&a.devices)?;
    let dev = placement.first();
    tch::manual_seed(0);
    let params = model::shard(&cfg, &placement, &model::init_whole(&cfg)?, a.channels_last)?;
    let mut sgd = Sgd::new(&params, UpdateRule::Pytorch, 0.9, 5e-4);
    let s = cfg.input_size;
    // A batch too large for memory is an error naming --batch, not libtorch's abort.
    let too_large = |e: tch::TchError| Error::Config(format!("--batch {}: its input cannot be made: {e}", a.batch));
    let mut x = Tensor::f_randn([a.batch, 3, s, s], (Kind::Float, dev)).map_err(too_large)?;
    if a.channels_last {
        x = crate::ops::channels_last(&x)?;
    }
    let y = Tensor::f_randint(1000, [a.batch], (Kind::Int64, dev)).map_err(too_large)?;
    let samples: Vec<usize> = (0..a.batch as usize).collect();
    let mut step_no = 0;
    let mut step = || -> Result<f64> {
        let t0 = Instant::now();
        // As the training loop: the FC layers' update inside their backward, unless measuring
        // without; dropout masks from (seed, step, sample) streams.
        let in_backward = (!a.no_fc_update_in_backward).then(|| sgd.in_backward(&params, 1e-3));
        let masks = Some(model::Masks::Keyed {
            seed: 0,
            step: step_no,
            samples: &samples,
        });
        step_no += 1;
        let loss = model::forward_masked(&cfg, &params, &x, masks, in_backward.as_ref())?.f_cross_entropy_loss(
            &y,
            None::<Tensor>,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?;
        loss.f_backward()?;
        sgd.step(&params, 1e-3, in_backward.as_ref())?;
        // Every device of the placement (the second one's update would spill into the next step).
        placement.synchronize();
        Ok(t0.elapsed().as_secs_f64())
    };
    step()?;
    let mut times = (0..a.steps).map(|_| step()).collect::<Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    Ok(Measured {
        side: Side::Ours,
        images_per_s: a.batch as f64 / t,
        seconds_per_step: t,
        compile_s: 0.0,
        peak_rss_mib: rss_mib("VmHWM"),
        base_rss_mib,
    })
}

/// VmRSS or VmHWM (the peak) of this process in MiB, from /proc/self/status (0 where absent).
fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The Python that runs the anchors when `--python` is not given: `$ALEXNET_PYTHON` (the wheel's
/// `alexnet` sets it to the interpreter running it), an activated virtualenv's, the current
/// folder's `.venv`, the venv this binary was built against, else `python3`.
fn default_python() -> PathBuf {
    let venv = |dir: PathBuf| Some(dir.join("bin/python")).filter(|p| p.is_file());
    std::env::var_os("ALEXNET_PYTHON")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("VIRTUAL_ENV").and_then(|v| venv(PathBuf::from(v))))
        .or_else(|| venv(PathBuf::from(".venv")))
        .or_else(|| venv(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv")))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// One Python anchor (benches/train_step.py, run by the venv's python in its own process).
fn python_side(a: &BenchTrainArgs, side: Side, threads: i32) -> Result<Measured> {
    let python = a.python.clone().unwrap_or_else(default_python);
    let placement = Placement::parse(&a.devices)?;
    let script = anchor_script()?;
    let mode = if side == Side::Compile { "compile" } else { "eager" };
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args([
            "--preset",
            a.preset.name(),
            "--batch",
            &a.batch.to_string(),
            "--steps",
            &a.steps.to_string(),
            "--mode",
            mode,
            "--threads",
            &threads.to_string(),
        ])
        .args(["--device", &placement::device_name(placement.first())])
        .args((side == Side::EagerCached).then_some("--cpu-cache"))
        .output()
        .map_err(io(&python))?;
    // A failed anchor (an inductor compile error, say) is the script's, not a bad flag.
    let fail = |reason: String| Error::File {
        path: script.clone(),
        reason: format!("--mode {mode}: {reason}"),
    };
    if !out.status.success() {
        return Err(fail(format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .ok_or_else(|| fail(format!("unexpected output: {text}")))?;
    // A missing number was 0 (an infinite ratio), not an error.
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| fail(format!("its result lacks the number `{k}`: {v}")))
    };
    Ok(Measured {
        side,
        images_per_s: f("images_per_s")?,
        seconds_per_step: f("seconds_per_step")?,
        compile_s: f("compile_s")?,
        peak_rss_mib: f("peak_rss_mib")?,
        base_rss_mib: f("base_rss_mib")?,
    })
}
