//! Evaluation (`alexnet eval`, and after every epoch) and prediction (`alexnet predict`).
use super::Group;
use crate::checkpoint;
use crate::config::Config;
use crate::data::rng::Rng;
use crate::data::{Loader, Split, Transform, View};
use crate::error::{Error, Result};
use crate::model::{self, Params};
use crate::placement::Placement;
use crate::settings::TrainConfig;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Top-1/top-5 accuracy and mean loss.
#[derive(Clone, Debug, Default)]
pub struct EvalResult {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub samples: usize,
    /// Counts by (true class, top-1 prediction), row-major, classes x classes; empty past
    /// [`CONFUSION_CLASSES`] classes.
    pub confusion: Vec<u64>,
    /// The class names, label order (the network's).
    pub classes: Vec<String>,
}

/// Classes up to which an evaluation counts the confusion matrix (classes² counters, summed over
/// ranks: 32 MB at this many; 21,841 classes made 3.8 GB per batch).
pub const CONFUSION_CLASSES: i64 = 2048;

impl EvalResult {
    /// Top-1 accuracy of each class (NaN for a class with no test sample).
    pub fn per_class(&self) -> Vec<f64> {
        let k = (self.confusion.len() as f64).sqrt() as usize;
        (0..k)
            .map(|i| {
                let row = &self.confusion[i * k..(i + 1) * k];
                row[i] as f64 / row.iter().sum::<u64>() as f64
            })
            .collect()
    }
}

/// Evaluates `params` on the loader's epoch 0 (centre crop, or the softmax averaged over 10 crops).
pub fn evaluate(cfg: &Config, params: &Params, loader: &Loader) -> Result<EvalResult> {
    evaluate_in(cfg, params, loader, None, &mut |_, _| false)
}

/// [`evaluate`] of one rank's share of the samples; the sums are added over the `group`'s ranks.
/// `before_batch(done, total)`, asked before each batch (this rank's batches done of its total),
/// returning true ends it with [`Error::Interrupted`] (Ctrl-C): on every rank once one was stopped
/// (the others learn it when their shares are through, with the sums).
pub fn evaluate_in(
    cfg: &Config,
    params: &Params,
    loader: &Loader,
    group: Option<&Group>,
    before_batch: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<EvalResult> {
    let _guard = tch::no_grad_guard();
    let views = loader.transform().view.count() as i64;
    // loss sum, top-1 hits, top-5 hits, samples, ranks stopped, then the confusion counts:
    // float64 (exact for counts below 2^53).
    let classes = cfg.fcs[cfg.fcs.len() - 1].out_features;
    let mut sums = vec![0.0f64; 5];
    let cells = if classes <= CONFUSION_CLASSES {
        classes * classes
    } else {
        0
    };
    let mut confusion = Tensor::f_zeros([cells], (Kind::Int64, tch::Device::Cpu))?;
    let mut epoch = loader.epoch(0);
    let total = loader.batches_per_epoch() as u64;
    for (done, batch) in (0..).zip(epoch.by_ref()) {
        crate::fault::point("eval-batch").map_err(|source| Error::Io {
            path: loader.dataset().origin.clone(),
            source,
        })?;
        if before_batch(done, total) {
            // Not at once: the other ranks wait for this one's sums.
            sums[4] = 1.0;
            break;
        }
        let b = batch?;
        let logits = model::forward(cfg, params, &b.images, false)?;
        let top = score(&logits, &b.labels, views, &mut sums)?;
        if cells > 0 {
            let cpu = tch::Device::Cpu;
            let cell = b
                .labels
                .to_device(cpu)
                .f_mul_scalar(classes)?
                .f_add(&top.f_select(1, 0)?.to_device(cpu))?;
            let _ = confusion.f_index_add_(0, &cell, &cell.f_ones_like()?)?;
        }
    }
    sums.extend(Vec::<i64>::try_from(confusion)?.into_iter().map(|c| c as f64));
    if let Some(g) = group {
        let device = params
            .iter_shards()
            .next()
            .map_or(tch::Device::Cpu, |(_, _, t)| t.device());
        let t = Tensor::from_slice(&sums).to_device(device);
        g.sum(&[&t])?;
        sums.copy_from_slice(&Vec::<f64>::try_from(t.to_device(tch::Device::Cpu))?);
    }
    let [loss, c1, c5, n, stopped] = [sums[0], sums[1], sums[2], sums[3], sums[4]];
    if stopped > 0.0 {
        return Err(Error::Interrupted(libc::SIGINT));
    }
    if n == 0.0 && epoch.skipped() > 0 {
        return Err(Error::File {
            path: loader.dataset().origin.clone(),
            reason: format!(
                "no image of the evaluation set could be read ({} skipped)",
                epoch.skipped()
            ),
        });
    }
    if n == 0.0 {
        return Err(Error::Config("evaluation set is empty".into()));
    }
    Ok(EvalResult {
        loss: loss / n,
        top1: c1 / n,
        top5: c5 / n,
        samples: n as usize,
        confusion: sums[5..].iter().map(|&c| c as u64).collect(),
        classes: loader.dataset().classes.clone(),
    })
}

/// Adds a batch's loss sum, top-1 hits, top-5 hits and samples to `sums[0..4]`, from the `logits`
/// of its `views` views of each image; returns the top-5 classes of each image (best first).
fn score(logits: &Tensor, labels: &Tensor, views: i64, sums: &mut [f64]) -> Result<Tensor> {
    let k = logits.size()[1];
    // The log of the softmax averaged over the views, in the log domain: a float32 softmax
    // underflowed to 0 for all but the top classes (ties in the top-5, a loss capped).
    let log_probs = logits
        .f_log_softmax(-1, Kind::Float)?
        .f_view([-1, views, k])?
        .f_logsumexp([1], false)?
        .f_sub_scalar((views as f64).ln())?;
    let labels = labels.to_device(log_probs.device());
    sums[0] += log_probs
        .f_nll_loss(&labels, None::<Tensor>, tch::Reduction::Sum, -100)?
        .double_value(&[]);
    let (_, top) = log_probs.f_topk(5.min(k), -1, true, true)?;
    let hits = top.f_eq_tensor(&labels.f_unsqueeze(1)?)?;
    sums[1] += hits.f_narrow(1, 0, 1)?.f_sum(Kind::Int64)?.int64_value(&[]) as f64;
    sums[2] += hits.f_sum(Kind::Int64)?.int64_value(&[]) as f64;
    sums[3] += labels.size()[0] as f64;
    Ok(top)
}

/// A trained network loaded from a checkpoint, for `eval` and `predict`.
pub struct Trained {
    pub cfg: Config,
    pub tc: TrainConfig,
    pub params: Params,
    pub classes: Vec<String>,
}

pub fn load_trained(path: &Path, devices: &str) -> Result<Trained> {
    let c = checkpoint::load_weights(path)?;
    let tc = super::resume::trained_config(&c);
    let cfg = c.state.config.model_config(c.state.classes.len() as i64)?;
    let placement = Placement::parse(devices)?;
    placement.check_available()?;
    let params = model::shard(&cfg, &placement, &c.weights, false)?;
    Ok(Trained {
        cfg,
        tc,
        params,
        classes: c.state.classes,
    })
}

/// Evaluates the checkpoint at (or newest under) `path` on its run's test split, or on `data`'s.
/// `before_batch(done, total)` is asked before each batch, as in [`evaluate_in`].
pub fn evaluate_checkpoint(
    path: &Path,
    data: Option<PathBuf>,
    ten_crop: bool,
    limit: Option<usize>,
    batch_size: usize,
    devices: &str,
    before_batch: &dyn Fn(u64, u64) -> bool,
) -> Result<EvalResult> {
    let t = load_trained(path, devices)?;
    let mut tc = t.tc.clone();
    (tc.devices, tc.batch_size, tc.data) = (devices.to_string(), batch_size, data.or(tc.data));
    let ds = tc.open(Split::Test, limit.or(tc.limit_test))?.labelled_as(&t.classes)?;
    let view = if ten_crop { View::TenCrop } else { View::Center };
    let loader = tc.loader(ds, view, false)?;
    let r = evaluate_in(&t.cfg, &t.params, &loader, None, &mut |done, total| {
        before_batch(done, total)
    })?;
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

/// An image file as the network's input: a `(3, S, S)` float tensor, transformed by `tf` (its
/// centre view).
pub fn image_tensor(tf: &Transform, path: &Path) -> Result<Tensor> {
    let img = crate::image::load_rgb(path)?;
    let mut chw = vec![0f32; tf.view_len()];
    tf.apply(&img, &mut Rng::new(0), &mut chw).map_err(|e| Error::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let s = i64::from(tf.crop);
    Ok(Tensor::from_slice(&chw).f_view([3, s, s])?)
}

/// Top-5 (class index, name, probability) of one image.
pub type Top5 = Vec<(i64, String, f64)>;

/// The top-5 of each image file, in order; a file that cannot be read or decoded is its own
/// error and the others are still predicted.
pub fn predict(t: &Trained, images: &[PathBuf]) -> Result<Vec<Result<Top5>>> {
    let _guard = tch::no_grad_guard();
    let tf = t.tc.transform(View::Center)?;
    let device = t.params.get(&format!("{}.weight", t.cfg.convs[0].name))?.device();
    let top5 = |path: &PathBuf| -> Result<Top5> {
        let x = image_tensor(&tf, path)?.f_unsqueeze(0)?.to_device(device);
        // Ranked by log-probabilities: probabilities below float32's range are all 0 (ties).
        let log_probs = model::forward(&t.cfg, &t.params, &x, false)?.f_log_softmax(-1, Kind::Float)?;
        if log_probs.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
            return Err(Error::Config(format!(
                "the network's outputs for {} are not finite: the checkpoint's weights produce \
                 NaN or infinite outputs (did the run diverge?)",
                path.display()
            )));
        }
        let (lp, i) = log_probs.f_topk(5.min(log_probs.size()[1]), -1, true, true)?;
        let p = lp.f_exp()?;
        Ok((0..p.size()[1])
            .map(|k| {
                let idx = i.int64_value(&[0, k]);
                (
                    idx,
                    t.classes.get(idx as usize).cloned().unwrap_or_default(),
                    p.double_value(&[0, k]),
                )
            })
            .collect())
    };
    Ok(images.iter().map(top5).collect())
}

/// The note that top-5 accuracy means nothing with at most 5 classes (it counts every class, so
/// it is 1 by construction), or `None` with more.
pub fn top5_note(classes: usize) -> Option<String> {
    (classes <= 5).then(|| format!("note: {classes} classes: top-5 counts every one of them (always 1)"))
}
