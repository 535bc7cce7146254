//! `alexnet experiment`: the paper's ablations at small scale, on Fashion-MNIST as a stated
//! stand-in for CIFAR-10 (Fig. 1) and ImageNet (the LRN, pooling and dropout claims of sections
//! 3.3, 3.4 and 4.2).
//!
//! Every arm x seed is an ordinary training run with its own folder (metrics, curves) and a
//! `result.json`; a rerun reuses the runs whose `result.json` holds the same settings, so an
//! interrupted experiment continues, and the three AlexNet ablations share their baseline runs
//! (the unchanged preset) when they write under the same root.
use crate::config::Activation;
use crate::error::{io, Error, Result};
use crate::metrics::StepRecord;
use crate::train::{self, Event, TrainConfig};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Batches averaged for the training error of Fig. 1 (1280 images at batch 128).
pub const ERROR_WINDOW: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Experiment {
    /// Fig. 1: steps of a four-layer CNN to 25 % training error, ReLU versus tanh.
    ReluVsTanh,
    /// Section 3.3: LRN on versus off.
    Lrn,
    /// Section 3.4: overlapping 3x3/2 max pooling versus non-overlapping 2x2/2.
    OverlapPool,
    /// Section 4.2: dropout 0.5 on versus off.
    Dropout,
}

impl Experiment {
    pub const ALL: [Experiment; 4] = [
        Experiment::ReluVsTanh,
        Experiment::Lrn,
        Experiment::OverlapPool,
        Experiment::Dropout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Experiment::ReluVsTanh => "relu-vs-tanh",
            Experiment::Lrn => "lrn",
            Experiment::OverlapPool => "overlap-pool",
            Experiment::Dropout => "dropout",
        }
    }

    /// What the paper reports, for the summary.
    pub fn paper_claim(self) -> &'static str {
        match self {
            Experiment::ReluVsTanh => "ReLU reaches 25 % training error on CIFAR-10 ~6x faster than tanh (Fig. 1)",
            Experiment::Lrn => "LRN lowers ImageNet top-1/top-5 error by 1.4/1.2 points (section 3.3)",
            Experiment::OverlapPool => {
                "overlapping pooling lowers ImageNet top-1/top-5 error by 0.4/0.3 points (section 3.4)"
            }
            Experiment::Dropout => {
                "without dropout the network overfits substantially; dropout roughly doubles the \
                 iterations to converge (section 4.2, no number given)"
            }
        }
    }

    /// The settings the experiment starts from (constant lr for Fig. 1, cosine for the others);
    /// the caller's flags are laid over them.
    pub fn defaults(self) -> TrainConfig {
        let base = TrainConfig {
            batch_size: 128,
            schedule: crate::optim::ScheduleKind::Constant,
            keep: 1,
            out: PathBuf::from("runs/experiments"),
            ..TrainConfig::default()
        };
        match self {
            // "No regularization of any kind"; the learning rate is swept per arm (`default_lrs`).
            Experiment::ReluVsTanh => TrainConfig {
                preset: crate::config::Preset::Cnn4,
                input_size: 28,
                epochs: 4,
                weight_decay: 0.0,
                ..base
            },
            // The paper's network at 63x63 (every stage keeps pixels: 15 -> 7 -> 3 -> 1) on a
            // 10k-image subset, about 1.5 minutes per run on two CPU cores. PyTorch's default init:
            // the paper's N(0, 0.01) does not leave chance level within such a run.
            _ => TrainConfig {
                preset: crate::config::Preset::Paper,
                input_size: 63,
                epochs: 5,
                limit_train: Some(10_000),
                eval_every: 5,
                torch_init: true,
                // Annealed to 0 at the end: a constant rate leaves the last epoch's noise (test
                // errors 2 points apart between seeds) on top of the effects being measured.
                schedule: crate::optim::ScheduleKind::Cosine,
                ..base
            },
        }
    }

    /// The learning rates swept for each arm of Fig. 1 (the paper picked each network's best).
    pub fn default_lrs(self) -> Vec<f64> {
        match self {
            Experiment::ReluVsTanh => vec![0.01, 0.03, 0.1],
            _ => vec![],
        }
    }

    /// The two arms, the paper's choice first: (label, settings).
    pub fn arms(self, base: &TrainConfig) -> [(&'static str, TrainConfig); 2] {
        let with = |f: &dyn Fn(&mut TrainConfig)| {
            let mut t = base.clone();
            f(&mut t);
            t
        };
        match self {
            Experiment::ReluVsTanh => [
                ("relu", with(&|t| t.activation = Activation::Relu)),
                ("tanh", with(&|t| t.activation = Activation::Tanh)),
            ],
            Experiment::Lrn => [
                ("with LRN", with(&|t| t.lrn = true)),
                ("without LRN", with(&|t| t.lrn = false)),
            ],
            Experiment::OverlapPool => [
                ("3x3/2 (overlapping)", with(&|t| t.pool_kernel = None)),
                ("2x2/2", with(&|t| t.pool_kernel = Some(2))),
            ],
            Experiment::Dropout => [
                ("dropout 0.5", with(&|t| t.dropout = None)),
                ("no dropout", with(&|t| t.dropout = Some(0.0))),
            ],
        }
    }
}

impl Experiment {
    /// The setting the arms vary.
    fn varies(self) -> &'static str {
        match self {
            Experiment::ReluVsTanh => "activation",
            Experiment::Lrn => "lrn",
            Experiment::OverlapPool => "pool_kernel",
            Experiment::Dropout => "dropout",
        }
    }

    /// Refuses settings that would void the comparison: the varied setting given by the caller
    /// (the arms set it), or a preset on which both arms build the same network (`lrn` on a preset
    /// without LRN).
    fn check_arms(self, base: &TrainConfig) -> Result<()> {
        let key = self.varies();
        if base.gave(key, false) {
            let flag = crate::settings::describe()
                .into_iter()
                .find(|d| d.key == key)
                .map_or(key.to_string(), |d| d.flag);
            return Err(Error::Config(format!(
                "{flag} (`{key}`): the {} experiment sets it in each arm; leave it out",
                self.name()
            )));
        }
        let [(a, first), (b, second)] = self.arms(base);
        if first.model_config(2)? == second.model_config(2)? {
            return Err(Error::Config(format!(
                "the {} preset gives the same network with `{a}` and `{b}`: nothing for the {} experiment to \
                 compare (choose another --preset)",
                base.preset,
                self.name()
            )));
        }
        Ok(())
    }
}

impl std::str::FromStr for Experiment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Experiment::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
            Error::Config(format!(
                "unknown experiment `{s}` (choose one of: relu-vs-tanh, lrn, overlap-pool, dropout)"
            ))
        })
    }
}

/// One finished run, as saved in its folder's `result.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub config: TrainConfig,
    /// Test errors at the end (None: the run diverged, which only Fig. 1's sweeps tolerate).
    pub test_top1_error: Option<f64>,
    pub test_top5_error: Option<f64>,
    /// Fig. 1 only: the training errors to reach, and for each the first step at which the mean
    /// training error of the last [`ERROR_WINDOW`] batches was at or below it (None: not within
    /// the run).
    pub targets: Vec<f64>,
    pub steps_to_target: Vec<Option<u64>>,
    pub steps: u64,
    /// Wall-clock seconds of the invocation that finished the run (a run continued from a
    /// checkpoint: its earlier attempts' time is not counted).
    pub seconds: f64,
}

/// The arm's runs at one learning rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArmResult {
    pub label: String,
    pub lr: f64,
    pub runs: Vec<RunResult>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub experiment: String,
    pub paper: String,
    pub target_errors: Vec<f64>,
    /// Every arm x learning rate that ran.
    pub arms: Vec<ArmResult>,
    pub markdown: String,
}

/// Fig. 1's view of a run's steps: the mean training error of the last [`ERROR_WINDOW`] batches
/// and the first step at which it reached each target.
struct Progress<'a> {
    targets: &'a [f64],
    window: RefCell<VecDeque<f64>>,
    reached: Vec<Cell<Option<u64>>>,
    steps: Cell<u64>,
}

impl<'a> Progress<'a> {
    fn new(targets: &'a [f64]) -> Self {
        Progress {
            targets,
            window: RefCell::new(VecDeque::with_capacity(ERROR_WINDOW)),
            reached: targets.iter().map(|_| Cell::new(None)).collect(),
            steps: Cell::new(0),
        }
    }

    /// Takes step `r` in; returns the window's mean training error and length.
    fn record(&self, r: &StepRecord) -> (f64, usize) {
        self.steps.set(r.step);
        let mut window = self.window.borrow_mut();
        if window.len() == ERROR_WINDOW {
            window.pop_front();
        }
        window.push_back(r.train_error);
        let mean = window.iter().sum::<f64>() / window.len() as f64;
        for (goal, at) in self.targets.iter().zip(&self.reached) {
            if window.len() == ERROR_WINDOW && mean <= *goal && at.get().is_none() {
                at.set(Some(r.step));
            }
        }
        (mean, window.len())
    }

    fn all_reached(&self) -> bool {
        !self.targets.is_empty() && self.reached.iter().all(|c| c.get().is_some())
    }
}

/// Runs (or reuses) one training run. With `targets` (Fig. 1) it stops once the training error
/// has reached all of them, and a diverging run counts as reaching none of the rest.
fn run_one(t: &TrainConfig, targets: &[f64]) -> Result<RunResult> {
    // One process at a time per run, for all of this (experiments that share a root share their
    // baseline runs): a second one waits here, then reuses the finished run instead of deleting
    // it as an unfinished one. The claim is a file beside the run (its own `.lock` is the
    // training loop's).
    let root = t.out.parent().unwrap_or(Path::new("."));
    crate::files::create_dir(root)?;
    let name = t.out.file_name().unwrap_or_default().to_string_lossy();
    let _claim = crate::files::RunLock::wait(&root.join(format!(".{name}.claim")))?;
    let result_path = t.out.join("result.json");
    if let Some(r) = finished(t, targets, &result_path)? {
        crate::say::line(&format!("  reusing {}", result_path.display()));
        remove_checkpoints(t)?; // a kill between the result and their deletion left them
        return Ok(r);
    }
    let started = std::time::Instant::now();
    // An unfinished earlier attempt (a kill, Ctrl-C) continues from its newest checkpoint (it was
    // deleted and trained again from step 1); otherwise it starts again (its metrics would mix
    // into the new run's).
    let mut progress = Progress::new(targets);
    let resume = continue_from(t, &progress)?;
    match resume {
        Some(step) => crate::say::line(&format!(
            "  continuing {} from its checkpoint at step {step}",
            t.out.display()
        )),
        None => {
            progress = Progress::new(targets);
            if t.out.exists() {
                std::fs::remove_dir_all(&t.out).map_err(io(&t.out))?;
            }
        }
    }
    let mut on_event = |e: &Event| {
        if let Event::Step(r) = e {
            let (mean, n) = progress.record(r);
            if r.step % 100 == 0 {
                crate::say::line(&format!(
                    "  step {}: loss {:.4}, training error {mean:.4} (last {n} batches), {:.0} img/s",
                    r.step, r.loss, r.images_per_s
                ));
            }
        }
    };
    let stop = || progress.all_reached();
    let eval = match train::train(t, resume.map(|_| t.out.as_path()), &mut on_event, &stop) {
        Ok(e) => Some(e),
        Err(e @ Error::Diverged { .. }) if !targets.is_empty() => {
            crate::say::line(&format!("  {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    let r = RunResult {
        config: t.clone(),
        test_top1_error: eval.as_ref().map(|e| 1.0 - e.top1),
        test_top5_error: eval.map(|e| 1.0 - e.top5),
        targets: targets.to_vec(),
        steps_to_target: progress.reached.iter().map(Cell::get).collect(),
        steps: progress.steps.get(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&r).expect("plain record");
    crate::files::write(&result_path, json.as_bytes())?;
    crate::fault::point("experiment-result-written").map_err(io(&result_path))?;
    // After the result (a kill between the two lost the finished run's checkpoints and result).
    remove_checkpoints(t)?;
    Ok(r)
}

/// The experiment keeps numbers, not weights: checkpoints of the paper network are ~160 MB.
fn remove_checkpoints(t: &TrainConfig) -> Result<()> {
    let ckpts = t.out.join("checkpoints");
    match ckpts.exists() {
        true => std::fs::remove_dir_all(&ckpts).map_err(io(&ckpts)),
        false => Ok(()),
    }
}

/// The training errors Fig. 1 times (`relu-vs-tanh` only; fractions in [0, 1)).
fn fig1_targets(exp: Experiment, target_errors: &[f64]) -> Result<Vec<f64>> {
    if exp != Experiment::ReluVsTanh {
        return Ok(vec![]);
    }
    if target_errors.is_empty() || target_errors.iter().any(|t| !(0.0..1.0).contains(t)) {
        return Err(Error::Config(format!(
            "--target-errors must be fractions in [0, 1), got {target_errors:?}"
        )));
    }
    Ok(target_errors.to_vec())
}

/// One run's result in words: its test error and the step at which it reached each target.
fn outcome(r: &RunResult, targets: &[f64]) -> String {
    let reached: Vec<String> = targets
        .iter()
        .zip(&r.steps_to_target)
        .map(|(g, s)| s.map_or(format!("{g} not reached"), |s| format!("{g} at step {s}")))
        .collect();
    format!(
        "test top-1 error {}{} ({:.0} s)",
        r.test_top1_error.map_or("- (diverged)".into(), |e| format!("{e:.4}")),
        if reached.is_empty() {
            String::new()
        } else {
            format!("; training error {}", reached.join(", "))
        },
        r.seconds
    )
}

/// Runs every arm x learning rate x seed of `exp` from the settings `base` (its `out` is the
/// root folder) and writes `<root>/<experiment>.md` and `.json`. `target_errors`: the training
/// errors Fig. 1 times (the other experiments ignore them).
pub fn run(exp: Experiment, base: &TrainConfig, seeds: u64, lrs: &[f64], target_errors: &[f64]) -> Result<Summary> {
    if seeds == 0 {
        return Err(Error::Config("--seeds must be >= 1".into()));
    }
    if base.seed.checked_add(seeds - 1).is_none() {
        return Err(Error::Config(format!(
            "--seed {} with --seeds {seeds} runs past the largest seed ({})",
            base.seed,
            u64::MAX
        )));
    }
    exp.check_arms(base)?;
    let targets = fig1_targets(exp, target_errors)?;
    if !lrs.is_empty() && base.gave("lr", false) {
        return Err(Error::Config(
            "--lr and --lrs both given (lr in --config counts too): --lrs lists the rates".into(),
        ));
    }
    if let Some(i) = (1..lrs.len()).find(|&i| lrs[..i].contains(&lrs[i])) {
        return Err(Error::Config(format!("--lrs lists {} twice", lrs[i])));
    }
    let lrs = if lrs.is_empty() { vec![base.lr] } else { lrs.to_vec() };
    for &lr in &lrs {
        TrainConfig { lr, ..base.clone() }.validate()?; // before the first run, not at the bad one
    }
    let total = (2 * lrs.len() as u64).checked_mul(seeds).ok_or_else(|| {
        Error::Config(format!(
            "--seeds {seeds} x {} learning rates x 2 arms is too many runs to count",
            lrs.len()
        ))
    })?;
    // Paths absolute: a rerun from another folder, or with --out spelled otherwise, finds (and
    // fingerprints) the same runs and data.
    let base = &absolute_paths(base)?;
    let root = base.out.clone();
    let inputs = inputs_key(base)?;
    let mut done = 0;
    let mut arms = Vec::new();
    for (label, arm) in exp.arms(base) {
        for &lr in &lrs {
            let mut runs = Vec::new();
            for k in 0..seeds {
                let mut t = arm.clone();
                (t.lr, t.seed) = (lr, base.seed + k);
                t.out = run_dir(&root, &t, &targets, inputs);
                done += 1;
                crate::say::line(&format!(
                    "[{done}/{total}] {}: {label}, lr {lr}, seed {} -> {}",
                    exp.name(),
                    t.seed,
                    t.out.display()
                ));
                let r = run_one(&t, &targets)?;
                crate::say::line(&format!("  {}", outcome(&r, &targets)));
                runs.push(r);
            }
            arms.push(ArmResult {
                label: label.into(),
                lr,
                runs,
            });
        }
    }
    let markdown = if targets.is_empty() {
        ablation_table(exp, &arms)
    } else {
        fig1_table(&arms, &targets)
    };
    let summary = Summary {
        experiment: exp.name().into(),
        paper: exp.paper_claim().into(),
        target_errors: targets,
        arms,
        markdown,
    };
    write_summary(&root, &summary)?;
    Ok(summary)
}

/// `<root>/<experiment>.md` and `.json`.
fn write_summary(root: &Path, summary: &Summary) -> Result<()> {
    // The same experiment run twice at once over the root writes the same summary: one at a
    // time (a second write truncated the other's `.partial` file before its rename).
    let _claim = crate::files::RunLock::wait(&root.join(format!(".{}.claim", summary.experiment)))?;
    for (ext, text) in [
        ("md", summary.markdown.clone()),
        ("json", serde_json::to_string_pretty(summary).expect("plain record")),
    ] {
        crate::files::write(&root.join(format!("{}.{ext}", summary.experiment)), text.as_bytes())?;
    }
    Ok(())
}

mod runs;
mod tables;
use runs::{absolute_paths, continue_from, finished, inputs_key, run_dir};
pub use tables::mean_std;
use tables::{ablation_table, fig1_table};

#[cfg(test)]
mod tests;
