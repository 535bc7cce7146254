//! The training loop (`alexnet train`), evaluation (`alexnet eval`) and prediction
//! (`alexnet predict`). Headless, resumable bit for bit, with a progress bar, JSONL/CSV metrics
//! and PNG curves. The default data is Fashion-MNIST from Debian's package (greyscale repeated to
//! three channels, resized to the input size).
use crate::checkpoint::{self, TrainState, FORMAT};
use crate::config::{Activation, Config, Init, Preset};
use crate::conv::ConvBackend;
use crate::data::rng::Rng;
use crate::data::{Dataset, Loader, LoaderConfig, OnBadImage, Split, Transform, View};
use crate::error::{Error, Result};
use crate::metrics::{EpochRecord, Metrics, ResumeAt, StepRecord};
use crate::model::{self, Params};
use crate::optim::{Schedule, ScheduleKind, Sgd, UpdateRule};
use crate::placement::Placement;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Everything a run is configured by: CLI flags or a TOML file (`alexnet train --config F`),
/// saved in every checkpoint.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub preset: String,
    /// Dataset path; None = Fashion-MNIST from /usr/share/datasets/fashion-mnist.
    pub data: Option<PathBuf>,
    pub input_size: u32,
    pub batch_size: usize,
    pub epochs: u64,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub update_rule: UpdateRule,
    pub schedule: ScheduleKind,
    pub step_epochs: u64,
    pub seed: u64,
    pub devices: String,
    pub conv_backend: String,
    pub out: PathBuf,
    /// Checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: u64,
    /// Checkpoints kept (plus the best).
    pub keep: usize,
    /// Evaluate every this many epochs.
    pub eval_every: u64,
    pub threads: usize,
    /// Use only this many training / test samples (a seeded subset).
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    /// Stop (with a checkpoint) after this many steps in this invocation.
    pub max_steps: Option<u64>,
    /// Stop (with a checkpoint and a final evaluation) after this many seconds of training.
    pub time_budget_s: Option<f64>,
    pub ten_crop_eval: bool,
    pub stats: Option<PathBuf>,
    /// bfloat16 autocast for forward and loss (meant for CUDA; works on the CPU too).
    pub bf16: bool,
    /// Inputs and conv weights in the channels_last memory format.
    pub channels_last: bool,
    /// Ablations (`alexnet experiment`): the non-linearity of every layer.
    pub activation: Activation,
    /// false: leave out the preset's LRN layers.
    pub lrn: bool,
    /// Max-pool window instead of the preset's 3 (stride stays 2: 2 = non-overlapping pooling).
    pub pool_kernel: Option<i64>,
    /// Dropout probability instead of the preset's (0 = off).
    pub dropout: Option<f64>,
    /// PyTorch's default init for every layer instead of the preset's (the paper's N(0, 0.01)
    /// stalls for epochs at small scale).
    pub torch_init: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            preset: "paper".into(),
            data: None,
            input_size: 224,
            batch_size: 128,
            epochs: 90,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            update_rule: UpdateRule::Paper,
            schedule: ScheduleKind::Plateau,
            step_epochs: 30,
            seed: 0,
            devices: "cpu".into(),
            conv_backend: "auto".into(),
            out: PathBuf::from("runs/train"),
            checkpoint_every: 0,
            keep: 3,
            eval_every: 1,
            threads: 0,
            limit_train: None,
            limit_test: None,
            max_steps: None,
            time_budget_s: None,
            ten_crop_eval: false,
            stats: None,
            bf16: false,
            channels_last: false,
            activation: Activation::Relu,
            lrn: true,
            pool_kernel: None,
            dropout: None,
            torch_init: false,
        }
    }
}

impl TrainConfig {
    pub fn from_toml(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The preset's network with the run's ablations, its head sized for the run's input.
    pub fn model_config(&self, classes: i64) -> Result<Config> {
        let mut cfg = Config::preset(self.preset.parse::<Preset>()?, classes)?;
        cfg.conv_backend = self.conv_backend.parse::<ConvBackend>()?;
        cfg.input_size = i64::from(self.input_size);
        cfg.activation = self.activation;
        if !self.lrn {
            cfg.convs.iter_mut().for_each(|c| c.lrn = false);
        }
        if self.torch_init {
            cfg.convs.iter_mut().for_each(|c| c.init = Init::TorchDefault);
            cfg.fcs.iter_mut().for_each(|f| f.init = Init::TorchDefault);
        }
        if let Some(k) = self.pool_kernel {
            if k < 1 {
                return Err(Error::Config(format!("pool_kernel must be >= 1, got {k}")));
            }
            cfg.pool.kernel = k;
        }
        if let Some(p) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::Config(format!("dropout must be in [0, 1), got {p}")));
            }
            cfg.dropout = p;
        }
        cfg.spatial_sizes(cfg.input_size)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.batch_size == 0 {
            return bad("batch_size must be >= 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if self.weight_decay < 0.0 {
            return bad(format!("weight_decay must be >= 0, got {}", self.weight_decay));
        }
        Ok(())
    }

    /// The run's dataset split (Fashion-MNIST by default), limited to a seeded subset if asked.
    pub fn open(&self, split: Split, limit: Option<usize>) -> Result<Dataset> {
        let ds = match &self.data {
            Some(p) => Dataset::open(p, split)?,
            None => Dataset::fashion_mnist(split)?,
        };
        Ok(match limit {
            Some(n) => ds.subset(n, self.seed),
            None => ds,
        })
    }

    /// The preset's transform for `view`, with the run's `alexnet stats` file if it has one.
    pub fn transform(&self, view: View) -> Result<Transform> {
        let stats = self.stats.as_deref().map(crate::data::stats::Stats::load).transpose()?;
        Ok(Transform::for_preset(
            self.preset.parse()?,
            self.input_size,
            view,
            stats.as_ref(),
        ))
    }

    /// A loader of `ds` for training (shuffled, drop-last) or evaluation.
    pub fn loader(&self, ds: Dataset, view: View, train: bool) -> Result<Loader> {
        let tf = self.transform(view)?;
        let cfg = LoaderConfig {
            batch_size: self.batch_size,
            threads: self.threads,
            seed: self.seed,
            shuffle: train,
            drop_last: train,
            on_bad_image: OnBadImage::Skip,
            device: Placement::parse(&self.devices)?.first(),
            ..LoaderConfig::default()
        };
        Loader::new(ds, tf, cfg)
    }
}

/// What `train` reports back (also to Python's on_step callback).
#[derive(Clone, Debug)]
pub enum Event {
    Step(StepRecord),
    Epoch(EpochRecord),
    Checkpoint(PathBuf),
}

/// Top-1/top-5 accuracy and mean loss.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvalResult {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub samples: usize,
}

/// Evaluates `params` on the loader's epoch 0 (centre crop, or the softmax averaged over 10 crops).
pub fn evaluate(cfg: &Config, params: &Params, loader: &Loader) -> Result<EvalResult> {
    let _guard = tch::no_grad_guard();
    let views = loader.transform().view.count() as i64;
    let (mut loss, mut c1, mut c5, mut n) = (0.0, 0i64, 0i64, 0usize);
    for batch in loader.epoch(0) {
        let b = batch?;
        let logits = model::forward(cfg, params, &b.images, false)?;
        let k = logits.size()[1];
        let probs = logits
            .f_softmax(-1, Kind::Float)?
            .f_view([-1, views, k])?
            .f_mean_dim(1, false, Kind::Float)?;
        let labels = b.labels.to_device(probs.device());
        loss += probs
            .f_clamp_min(1e-12)?
            .f_log()?
            .f_nll_loss(&labels, None::<Tensor>, tch::Reduction::Sum, -100)?
            .double_value(&[]);
        let (_, top) = probs.f_topk(5.min(k), -1, true, true)?;
        let hits = top.f_eq_tensor(&labels.f_unsqueeze(1)?)?;
        c1 += hits.f_narrow(1, 0, 1)?.f_sum(Kind::Int64)?.int64_value(&[]);
        c5 += hits.f_sum(Kind::Int64)?.int64_value(&[]);
        n += labels.size()[0] as usize;
    }
    if n == 0 {
        return Err(Error::Config("evaluation set is empty".into()));
    }
    Ok(EvalResult {
        loss: loss / n as f64,
        top1: c1 as f64 / n as f64,
        top5: c5 as f64 / n as f64,
        samples: n,
    })
}

/// Whole CPU tensors of per-shard buffers (the optimizer's), by parameter name.
fn gather_velocity(params: &Params, sgd: &Sgd) -> Result<BTreeMap<String, Tensor>> {
    let mut parts: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    for ((name, _, _), v) in params.iter_shards().zip(&sgd.velocity) {
        parts
            .entry(name.clone())
            .or_default()
            .push(v.to_device(tch::Device::Cpu));
    }
    parts.into_iter().map(|(k, v)| Ok((k, Tensor::f_cat(&v, 0)?))).collect()
}

/// Trains as `tc` says (or continues the checkpoint `resume`), calling `on_event` as it goes;
/// `stop()` returning true ends the run cleanly after a checkpoint. Returns the final evaluation.
pub fn train(
    tc: &TrainConfig,
    resume: Option<&Path>,
    on_event: &mut dyn FnMut(&Event),
    stop: &dyn Fn() -> bool,
) -> Result<EvalResult> {
    let (tc, ckpt) = match resume {
        Some(path) => {
            // Put a checkpoint a crash left hidden back in place, clear leftovers (RELIABILITY.md).
            checkpoint::recover(path)?;
            let c = checkpoint::load(path)?;
            let t = resumed_config(tc, &c);
            warn_ignored(tc, &t);
            (t, Some(c))
        }
        None => (tc.clone(), None),
    };
    tc.validate()?;
    let train_ds = tc.open(Split::Train, tc.limit_train)?;
    let test_ds = tc.open(Split::Test, tc.limit_test)?;
    let classes = train_ds.classes.clone();
    let cfg = tc.model_config(classes.len() as i64)?;
    let placement = Placement::parse(&tc.devices)?;
    placement.check_available()?;
    let train_loader = tc.loader(train_ds, View::Train, true)?;
    let eval_view = if tc.ten_crop_eval { View::TenCrop } else { View::Center };
    let test_loader = tc.loader(test_ds, eval_view, false)?;
    if train_loader.batches_per_epoch() == 0 {
        return Err(Error::Config(format!(
            "fewer training samples than one batch of {}",
            tc.batch_size
        )));
    }
    std::fs::create_dir_all(&tc.out).map_err(|source| Error::Io {
        path: tc.out.clone(),
        source,
    })?;
    let cj = tc.out.join("classes.json");
    std::fs::write(&cj, train_loader.dataset().classes_json()).map_err(|source| Error::Io { path: cj, source })?;

    let (params, mut sgd, mut state) = match ckpt {
        Some(c) => {
            let params = model::shard(&cfg, &placement, &c.weights, tc.channels_last)?;
            let mut sgd = Sgd::new(&params, tc.update_rule, tc.momentum, tc.weight_decay);
            let v = model::split(&cfg, &placement, &c.velocity, false)?;
            sgd.velocity = params.iter_shards().map(|(n, i, _)| v[n][i].shallow_clone()).collect();
            (params, sgd, c.state)
        }
        None => {
            tch::manual_seed(tc.seed as i64);
            let params = model::shard(&cfg, &placement, &model::init_whole(&cfg)?, tc.channels_last)?;
            let sgd = Sgd::new(&params, tc.update_rule, tc.momentum, tc.weight_decay);
            let schedule = Schedule {
                step_epochs: tc.step_epochs,
                ..Schedule::new(tc.schedule, tc.lr, tc.epochs)
            };
            let state = TrainState {
                format: FORMAT.into(),
                config: tc.clone(),
                epoch: 0,
                batch_in_epoch: 0,
                step: 0,
                schedule,
                best_top1: None,
                best_step: None,
                classes: classes.clone(),
                loss_sum: 0.0,
                loss_count: 0,
            };
            (params, sgd, state)
        }
    };
    state.config = tc.clone();
    let per_epoch = train_loader.batches_per_epoch() as u64;
    state.check_position(per_epoch)?;
    let at = ResumeAt {
        step: state.step,
        epoch: state.epoch,
    };
    let metrics = Metrics::open(&tc.out, resume.map(|_| at))?;
    let started = Instant::now();
    let mut steps_here = 0u64;
    let save = |state: &TrainState, params: &Params, sgd: &Sgd, on_event: &mut dyn FnMut(&Event)| -> Result<()> {
        metrics.sync()?;
        let dir = checkpoint::save(
            &tc.out,
            state,
            &params.gather_cpu()?,
            &gather_velocity(params, sgd)?,
            tc.keep,
        )?;
        on_event(&Event::Checkpoint(dir));
        Ok(())
    };
    let mut last_eval = EvalResult::default();
    'epochs: while state.epoch < tc.epochs {
        let epoch_start = Instant::now();
        let batches = train_loader.epoch_from(state.epoch, state.batch_in_epoch as usize);
        for batch in batches {
            let b = batch?;
            let t0 = Instant::now();
            // Dropout draws from torch's generator: seed it per step, so a resumed run draws the
            // same masks as an uninterrupted one.
            tch::manual_seed((Rng::for_sample(tc.seed, u64::MAX, state.step).next_u64() >> 1) as i64);
            let t = state.epoch as f64 + state.batch_in_epoch as f64 / per_epoch as f64;
            let lr = state.schedule.lr_at(t);
            let x = if tc.channels_last {
                crate::ops::channels_last(&b.images)?
            } else {
                b.images
            };
            let cuda = matches!(x.device(), tch::Device::Cuda(_));
            let step = || -> Result<(Tensor, Tensor)> {
                let logits = model::forward(&cfg, &params, &x, true)?;
                let y = b.labels.to_device(logits.device());
                let loss = logits.f_cross_entropy_loss(&y, None::<Tensor>, tch::Reduction::Mean, -100, 0.0)?;
                // The batch's error under the weights before this update (dropout on): the
                // paper's "training error rate" (Fig. 1).
                let wrong = logits.f_argmax(-1, false)?.f_ne_tensor(&y)?.f_sum(Kind::Int64)?;
                Ok((loss, wrong))
            };
            let (loss, wrong) = if tc.bf16 {
                crate::ops::autocast_bf16(cuda, step)?
            } else {
                step()?
            };
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                return Err(Error::Diverged {
                    loss: lv,
                    step: state.step,
                    epoch: state.epoch,
                    checkpoints: tc.out.join("checkpoints"),
                });
            }
            loss.f_backward()?;
            sgd.step(&params, lr)?;
            state.step += 1;
            state.batch_in_epoch += 1;
            steps_here += 1;
            state.loss_sum += lv;
            state.loss_count += 1;
            let rec = StepRecord {
                step: state.step,
                epoch: state.epoch,
                loss: lv,
                lr,
                train_error: wrong.int64_value(&[]) as f64 / b.labels.size()[0] as f64,
                images_per_s: b.labels.size()[0] as f64 / t0.elapsed().as_secs_f64(),
            };
            metrics.step(&rec)?;
            on_event(&Event::Step(rec));
            let out_of_time = tc.time_budget_s.is_some_and(|s| started.elapsed().as_secs_f64() >= s);
            let out_of_steps = tc.max_steps.is_some_and(|m| steps_here >= m);
            if out_of_time || out_of_steps || stop() {
                if out_of_time {
                    // Mid-epoch: reported, but not an epochs.csv row (the epoch's row comes when
                    // a resumed run finishes it).
                    last_eval = evaluate(&cfg, &params, &test_loader)?;
                    eprintln!(
                        "time budget reached after {} steps: top-1 {:.4}, top-5 {:.4}",
                        state.step, last_eval.top1, last_eval.top5
                    );
                }
                save(&state, &params, &sgd, on_event)?;
                break 'epochs;
            }
            if tc.checkpoint_every > 0 && state.step % tc.checkpoint_every == 0 {
                save(&state, &params, &sgd, on_event)?;
            }
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
        if state.epoch % tc.eval_every.max(1) == 0 || state.epoch == tc.epochs {
            last_eval = evaluate(&cfg, &params, &test_loader)?;
            note_best(&mut state, &last_eval);
            if state.schedule.end_epoch(Some(1.0 - last_eval.top1)) {
                eprintln!("validation error plateaued: lr -> {:e}", state.schedule.lr);
            }
            epoch_end(&metrics, &state, &last_eval, epoch_start, on_event)?;
        }
        (state.loss_sum, state.loss_count) = (0.0, 0);
        save(&state, &params, &sgd, on_event)?;
    }
    if steps_here == 0 {
        eprintln!(
            "the run is complete ({} of {} epochs); pass a larger --epochs to train on",
            state.epoch, tc.epochs
        );
    }
    if last_eval.samples == 0 {
        // Stopped before an epoch's evaluation (step limit, Ctrl-C, or nothing left to train).
        last_eval = evaluate(&cfg, &params, &test_loader)?;
    }
    metrics.plot()?;
    Ok(last_eval)
}

/// Marks the current step as the best if its evaluation beats every earlier one.
fn note_best(state: &mut TrainState, e: &EvalResult) {
    if state.best_top1.is_none_or(|b| e.top1 > b) {
        state.best_top1 = Some(e.top1);
        state.best_step = Some(state.step);
    }
}

/// The settings of a resumed run: the checkpoint's, except what is per invocation (step and time
/// budgets, `--keep`), a new `--epochs`, and where to write (`--out`, else the run's own folder).
fn resumed_config(tc: &TrainConfig, c: &checkpoint::Checkpoint) -> TrainConfig {
    let mut t = c.state.config.clone();
    // A changed model or data setting would break the bit-exact continuation.
    (t.max_steps, t.time_budget_s) = (tc.max_steps, tc.time_budget_s);
    let default = TrainConfig::default();
    if tc.epochs != default.epochs {
        t.epochs = tc.epochs;
    }
    if tc.keep != default.keep {
        t.keep = tc.keep;
    }
    t.out = if tc.out != default.out {
        tc.out.clone()
    } else {
        c.dir
            .parent()
            .filter(|p| p.ends_with("checkpoints"))
            .and_then(Path::parent)
            .map_or(t.out, Path::to_path_buf)
    };
    t
}

/// Tells which of the caller's non-default settings a resumed run does not take.
fn warn_ignored(given: &TrainConfig, used: &TrainConfig) {
    let (Ok(serde_json::Value::Object(g)), Ok(serde_json::Value::Object(u)), Ok(serde_json::Value::Object(d))) = (
        serde_json::to_value(given),
        serde_json::to_value(used),
        serde_json::to_value(TrainConfig::default()),
    ) else {
        return;
    };
    for (k, v) in &g {
        if v != &d[k] && v != &u[k] {
            eprintln!("warning: --resume keeps the run's {k} = {} (ignoring {v})", u[k]);
        }
    }
}

fn epoch_end(
    metrics: &Metrics,
    state: &TrainState,
    e: &EvalResult,
    start: Instant,
    on_event: &mut dyn FnMut(&Event),
) -> Result<()> {
    let rec = EpochRecord {
        epoch: state.epoch,
        step: state.step,
        train_loss: state.loss_sum / state.loss_count.max(1) as f64,
        val_loss: e.loss,
        val_top1: e.top1,
        val_top5: e.top5,
        lr: state.schedule.lr_at(state.epoch as f64),
        seconds: start.elapsed().as_secs_f64(),
    };
    metrics.epoch(&rec)?;
    metrics.plot()?;
    on_event(&Event::Epoch(rec));
    Ok(())
}

/// A trained network loaded from a checkpoint, for `eval` and `predict`.
pub struct Trained {
    pub cfg: Config,
    pub tc: TrainConfig,
    pub params: Params,
    pub classes: Vec<String>,
}

pub fn load_trained(path: &Path, devices: &str) -> Result<Trained> {
    let c = checkpoint::load(path)?;
    let cfg = c.state.config.model_config(c.state.classes.len() as i64)?;
    let placement = Placement::parse(devices)?;
    placement.check_available()?;
    let params = model::shard(&cfg, &placement, &c.weights, false)?;
    Ok(Trained {
        cfg,
        tc: c.state.config,
        params,
        classes: c.state.classes,
    })
}

/// Evaluates the checkpoint at (or newest under) `path` on its run's test split, or on `data`'s.
pub fn evaluate_checkpoint(
    path: &Path,
    data: Option<PathBuf>,
    ten_crop: bool,
    limit: Option<usize>,
    batch_size: usize,
    devices: &str,
) -> Result<EvalResult> {
    let t = load_trained(path, devices)?;
    let mut tc = t.tc.clone();
    (tc.devices, tc.batch_size, tc.data) = (devices.to_string(), batch_size, data.or(tc.data));
    let ds = tc.open(Split::Test, limit.or(tc.limit_test))?;
    let view = if ten_crop { View::TenCrop } else { View::Center };
    let r = evaluate(&t.cfg, &t.params, &tc.loader(ds, view, false)?)?;
    if !r.loss.is_finite() {
        return Err(Error::File {
            path: path.to_path_buf(),
            reason: format!(
                "evaluation gave a {} loss: these weights produce NaN or infinite outputs",
                r.loss
            ),
        });
    }
    Ok(r)
}

/// Top-5 (class index, name, probability) for each image file.
pub fn predict(t: &Trained, images: &[PathBuf]) -> Result<Vec<Vec<(i64, String, f64)>>> {
    let _guard = tch::no_grad_guard();
    let tf = t.tc.transform(View::Center)?;
    let mut out = Vec::new();
    for path in images {
        let img = crate::image::load_rgb(path)?;
        let mut chw = vec![0f32; tf.view_len()];
        tf.apply(&img, &mut Rng::new(0), &mut chw).map_err(|e| Error::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let s = i64::from(t.tc.input_size);
        let x = Tensor::from_slice(&chw)
            .view([1, 3, s, s])
            .to_device(t.params.get(&format!("{}.weight", t.cfg.convs[0].name))?.device());
        let probs = model::forward(&t.cfg, &t.params, &x, false)?.f_softmax(-1, Kind::Float)?;
        let (p, i) = probs.f_topk(5.min(probs.size()[1]), -1, true, true)?;
        let row: Vec<(i64, String, f64)> = (0..p.size()[1])
            .map(|k| {
                let idx = i.int64_value(&[0, k]);
                (
                    idx,
                    t.classes.get(idx as usize).cloned().unwrap_or_default(),
                    p.double_value(&[0, k]),
                )
            })
            .collect();
        out.push(row);
    }
    Ok(out)
}
