//! The training loop: [`Run::start`] (a fresh run or a resumed checkpoint), [`Run::step`] (one
//! optimiser step), [`Run::end_epoch`] (evaluation, schedule, epochs.csv, checkpoint), driven by
//! [`Run::train`].
use super::eval::{evaluate_in, EvalResult};
use super::{Event, Group};
use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::data::{Batch, Loader};
use crate::error::{Error, Result};
use crate::files::RunLock;
use crate::metrics::{EpochRecord, Metrics, StepRecord};
use crate::model::{self, Masks, Params};
use crate::optim::{InBackward, Sgd};
use crate::settings::TrainConfig;
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Kind, Tensor};

mod start;

/// A run in progress: its settings, network, optimiser, position and outputs.
pub struct Run<'a> {
    tc: TrainConfig,
    cfg: Config,
    params: Params,
    sgd: Sgd,
    state: TrainState,
    train_loader: Loader,
    test_loader: Loader,
    /// Rank 0's (the only writer of a data-parallel run).
    metrics: Option<Metrics>,
    group: Option<&'a Group<'a>>,
    on_event: &'a mut dyn FnMut(&Event),
    /// Rank 0's hold on the run folder, for the run's lifetime.
    _lock: Option<RunLock>,
    /// Whether a run stopped by `stop()` is evaluated before `train` returns (false: it returns
    /// `Error::Interrupted(0)` right after the checkpoint, for a caller that discards the result;
    /// `stop()` then ends the final evaluation too).
    pub(super) eval_on_stop: bool,
}

/// Why a run stops after the current step (agreed by every rank).
#[derive(Clone, Copy, Default)]
struct Stop {
    out_of_time: bool,
    steps_done: bool,
    /// `stop()`: Ctrl-C, SIGTERM, a Python callback's error, an experiment's target.
    asked: bool,
}

impl<'a> Run<'a> {
    /// Trains to the last epoch, or until the step or time budget runs out or `stop()` says so
    /// (then with a checkpoint). Returns the last evaluation. `stop()` is asked after each step
    /// and before each batch of an epoch's or a budget's evaluation: one asked to stop ends
    /// there, and the position before it is saved (a resume redoes an epoch's). The final
    /// evaluation is stopped by it only when the caller discards a stopped run's result.
    pub fn train(mut self, stop: &dyn Fn() -> bool) -> Result<EvalResult> {
        // Large CPU blocks freed by one step are handed to the next instead of being unmapped
        // and page-faulted in again (kernels/cpu_cache.cpp; this thread only, until we return).
        let _cache = crate::ops::CpuCacheScope::new();
        let started = Instant::now();
        let mut steps_here = 0u64;
        let mut last_eval = None;
        if !self.eval_on_stop && stop() {
            // Stopped before any step (a start-up warning made an error): nothing to save.
            return Err(Error::Interrupted(0));
        }
        if self.state.epoch >= self.tc.epochs {
            crate::say::note(&format!(
                "the run is complete ({} epochs done, --epochs {}); pass a larger --epochs to train on",
                self.state.epoch, self.tc.epochs
            ));
        }
        while self.state.epoch < self.tc.epochs {
            let epoch_start = Instant::now();
            let mut batches = self
                .train_loader
                .epoch_from(self.state.epoch, self.state.batch_in_epoch as usize);
            // Images trained on this epoch, over every rank.
            let (planned, mut seen) = (batches.len(), 0.0);
            // Set when the step or time budget is spent: whether it is the time's.
            let mut budget = None;
            for batch in batches.by_ref() {
                let images = self.step(batch?)?;
                seen += images;
                let stepped = images > 0.0;
                steps_here += u64::from(stepped);
                let agreed = self.agree(Stop {
                    out_of_time: self
                        .tc
                        .time_budget_s
                        .is_some_and(|s| started.elapsed().as_secs_f64() >= s),
                    steps_done: self.tc.max_steps.is_some_and(|m| steps_here >= m),
                    asked: stop(),
                })?;
                if agreed.asked {
                    // The checkpoint first: a preempted machine's grace period is short (the
                    // weights are checked finite before it is written); the evaluation follows.
                    self.save()?;
                    return self.stopped();
                }
                if agreed.out_of_time || agreed.steps_done {
                    budget = Some(agreed.out_of_time);
                    if self.state.batch_in_epoch as usize >= self.train_loader.batches_per_epoch() {
                        break; // the epoch's last step: the epoch ends as usual first
                    }
                    return self.end_mid_epoch(agreed.out_of_time, steps_here, stop);
                }
                if stepped && self.tc.checkpoint_every > 0 && self.state.step.is_multiple_of(self.tc.checkpoint_every) {
                    self.save()?;
                }
            }
            if seen == 0.0 && planned > 0 {
                return Err(self.nothing_read(batches.skipped()));
            }
            // Not an earlier epoch's: a budget spent on an epoch not evaluated ends with an
            // evaluation of its weights (the last epoch is always evaluated).
            last_eval = match self.end_epoch(epoch_start, stop) {
                Err(Error::Interrupted(_)) => return self.stopped(),
                e => e?,
            };
            if let Some(out_of_time) = budget {
                self.budget_note(out_of_time, steps_here);
                break;
            }
        }
        self.finish(last_eval, stop)
    }

    /// A step or time budget spent before the epoch's last step: the weights are evaluated before
    /// the checkpoint, which is not written if the outputs are NaN (unless a stop ends the
    /// evaluation: the checkpoint comes first then, as for a stop after a step). Mid-epoch: not an
    /// epochs.csv row (that comes when a resumed run finishes the epoch).
    fn end_mid_epoch(mut self, out_of_time: bool, steps_here: u64, stop: &dyn Fn() -> bool) -> Result<EvalResult> {
        let e = match self.evaluate_keeping(stop) {
            Err(Error::Interrupted(_)) => {
                self.budget_note(out_of_time, steps_here);
                return self.stopped();
            }
            e => e?,
        };
        self.save()?;
        self.budget_note(out_of_time, steps_here);
        self.finish(Some(e), stop)
    }

    /// The error for an epoch whose every batch's images were bad (and skipped): not an epoch of
    /// training.
    fn nothing_read(&self, skipped: usize) -> Error {
        Error::File {
            path: self.tc.data.clone().unwrap_or_else(|| "fashion-mnist".into()),
            reason: format!(
                "no training image of epoch {} could be read ({skipped} skipped): nothing to train on",
                self.state.epoch + 1
            ),
        }
    }

    /// The run stops on request, its position saved: the final evaluation follows, or
    /// `Error::Interrupted(0)` for a caller that discards it.
    fn stopped(self) -> Result<EvalResult> {
        (self.on_event)(&Event::Stopped);
        if !self.eval_on_stop {
            return Err(Error::Interrupted(0));
        }
        self.finish(None, &|| false)
    }

    /// Whether to stop after this step: any rank's wish (a time budget or Ctrl-C on one rank
    /// stops them all at the same step).
    fn agree(&self, wants: Stop) -> Result<Stop> {
        let Some(g) = self.group else {
            return Ok(wants);
        };
        let flags = [wants.out_of_time, wants.steps_done, wants.asked].map(|b| f64::from(u8::from(b)));
        let v = g.sum_values(flags, self.params.device())?;
        Ok(Stop {
            out_of_time: v[0] > 0.0,
            steps_done: v[1] > 0.0,
            asked: v[2] > 0.0,
        })
    }

    /// The evaluation of the current weights, its progress reported; a non-finite loss is a
    /// divergence. `stop()` (any rank's) ends it with `Error::Interrupted`.
    fn evaluate(&mut self, stop: &dyn Fn() -> bool) -> Result<EvalResult> {
        let on_event = &mut self.on_event;
        let mut before_batch = |done, total| {
            on_event(&Event::Evaluating { done, total });
            stop()
        };
        let e = evaluate_in(
            &self.cfg,
            &self.params,
            &self.test_loader,
            self.group,
            &mut before_batch,
        )?;
        if !e.loss.is_finite() {
            let (step, epoch) = (self.state.step, self.state.epoch);
            return Err(diverged(&self.tc, "the validation loss".into(), e.loss, step, epoch));
        }
        Ok(e)
    }

    /// [`Self::evaluate`]; when it is stopped, or fails for another reason than a divergence
    /// (e.g. the evaluation data became unreadable), the training since the last checkpoint is
    /// saved (at the position before the evaluation), so that a resume redoes only the evaluation.
    fn evaluate_keeping(&mut self, stop: &dyn Fn() -> bool) -> Result<EvalResult> {
        let e = self.evaluate(stop);
        match &e {
            Ok(_) | Err(Error::Diverged { .. }) => {}
            Err(Error::Interrupted(_)) => self.save()?,
            Err(_) => {
                if let Err(kept) = self.save() {
                    crate::say::note(&format!("warning: the training could not be saved either: {kept}"));
                }
            }
        }
        e
    }

    /// Says that the step or time budget stopped the run (and how it goes on, if it can).
    fn budget_note(&self, out_of_time: bool, steps_here: u64) {
        let why = if out_of_time {
            "time budget reached"
        } else {
            "step budget (max steps) reached"
        };
        let on = if self.state.epoch < self.tc.epochs && self.metrics.is_some() {
            format!("; a resume of {} trains on", self.tc.out.display())
        } else {
            String::new()
        };
        crate::say::note(&format!(
            "{why} at step {} ({steps_here} this run){on}",
            self.state.step
        ));
    }

    /// One optimiser step on `b`: forward, loss, backward, (the ranks' gradients summed), update,
    /// metrics. Returns the images it trained on (over every rank): none when every image of the
    /// (global) batch was bad, and then it is no step (one process and N ranks alike), only a
    /// place in the epoch passed.
    fn step(&mut self, b: Batch) -> Result<f64> {
        let t0 = Instant::now();
        let n = b.labels.size()[0] as f64;
        let images = match self.group {
            Some(g) => g.sum_values([n], self.params.device())?[0],
            None => n,
        };
        if images == 0.0 {
            self.state.batch_in_epoch += 1;
            return Ok(0.0);
        }
        let per_epoch = self.train_loader.batches_per_epoch() as f64;
        let lr = self
            .state
            .schedule
            .lr_at(self.state.epoch as f64 + self.state.batch_in_epoch as f64 / per_epoch);
        // One process, float32: the FC layers' update runs inside their backward (src/optim.rs).
        // With ranks the gradients must be all-reduced first, so every update waits for them.
        let tc = &self.tc;
        let in_backward = (tc.fc_update_in_backward && self.group.is_none() && !tc.bf16)
            .then(|| self.sgd.in_backward(&self.params, lr));
        let (loss, wrong) = self.loss(&b, in_backward.as_ref())?;
        let (tc, state, params) = (&self.tc, &mut self.state, &self.params);
        let totals = [loss.double_value(&[]), wrong.int64_value(&[]) as f64];
        // One process: the batch's mean loss. Ranks: each one's loss summed over its slice, / the
        // global batch's images: the summed gradients are the gradient of the mean over the
        // global batch, however its readable images fall on the ranks.
        let (lv, wrong) = match self.group {
            None => {
                // Before backward, which may already update weights (in_backward).
                finite_loss(tc, state, totals[0])?;
                loss.f_backward()?;
                (totals[0], totals[1])
            }
            Some(g) => {
                (&loss / images).f_backward()?;
                let [loss_sum, wrong] = g.sum_step(params, totals)?;
                (loss_sum / images, wrong)
            }
        };
        finite_loss(tc, state, lv)?;
        self.sgd.step(params, lr, in_backward.as_ref())?;
        state.step += 1;
        state.batch_in_epoch += 1;
        state.loss_sum += lv;
        state.loss_count += 1;
        let rec = StepRecord {
            step: state.step,
            epoch: state.epoch,
            loss: lv,
            lr,
            train_error: wrong / images,
            images_per_s: images / t0.elapsed().as_secs_f64(),
        };
        crate::fault::point("train-step").map_err(|source| Error::Io {
            path: tc.out.clone(),
            source,
        })?;
        if let Some(m) = &self.metrics {
            m.step(&rec)?;
        }
        (self.on_event)(&Event::Step(rec));
        Ok(images)
    }

    /// The batch's mean cross-entropy (a rank's: summed, see `step`) and its number of wrong top-1
    /// predictions, under the weights before this update with dropout on: the paper's "training
    /// error rate" (Fig. 1).
    fn loss(&self, b: &Batch, in_backward: Option<&InBackward>) -> Result<(Tensor, Tensor)> {
        let x = if self.tc.channels_last {
            crate::ops::channels_last(&b.images)?
        } else {
            b.images.shallow_clone()
        };
        // Dropout masks from (seed, step, sample): the same on resume and however the global
        // batch is split over ranks.
        let masks = Masks::Keyed {
            seed: self.tc.seed,
            step: self.state.step,
            samples: &b.indices,
        };
        let forward = || -> Result<(Tensor, Tensor)> {
            let logits = model::forward_masked(&self.cfg, &self.params, &x, Some(masks), in_backward)?;
            let y = b.labels.to_device(logits.device());
            // Summed over a rank's slice (maybe empty: its images were all bad), see `step`.
            let reduction = if self.group.is_some() {
                tch::Reduction::Sum
            } else {
                tch::Reduction::Mean
            };
            let loss = logits.f_cross_entropy_loss(&y, None::<Tensor>, reduction, -100, 0.0)?;
            let wrong = logits.f_argmax(-1, false)?.f_ne_tensor(&y)?.f_sum(Kind::Int64)?;
            Ok((loss, wrong))
        };
        if self.tc.bf16 {
            crate::ops::autocast_bf16(matches!(x.device(), tch::Device::Cuda(_)), forward)
        } else {
            forward()
        }
    }

    /// The end of an epoch: evaluation (every `eval_every` epochs and after the last), the
    /// schedule, an epochs.csv row, a checkpoint, curves.png. Returns the evaluation if there was one.
    fn end_epoch(&mut self, epoch_start: Instant, stop: &dyn Fn() -> bool) -> Result<Option<EvalResult>> {
        let epoch = self.state.epoch + 1;
        // Evaluated at the epoch's last position: a failed evaluation saves that (a resume
        // redoes the epoch's end), not an epoch that looks ended without its row.
        let evaluated = (epoch.is_multiple_of(self.tc.eval_every.max(1)) || epoch == self.tc.epochs)
            .then(|| self.evaluate_keeping(stop))
            .transpose()?;
        let state = &mut self.state;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        let mut result = None;
        if let Some(e) = evaluated {
            // The lr the epoch's last step trained with (before a plateau drop takes effect).
            let per_epoch = self.train_loader.batches_per_epoch() as f64;
            let state = &mut self.state;
            let lr = state
                .schedule
                .lr_at((state.epoch - 1) as f64 + (per_epoch - 1.0) / per_epoch);
            if state.best_top1.is_none_or(|b| e.top1 > b) {
                (state.best_top1, state.best_step) = (Some(e.top1), Some(state.step));
            }
            if state.schedule.end_epoch(Some(1.0 - e.top1)) {
                crate::say::note(&format!("validation error plateaued: lr -> {:e}", state.schedule.lr));
            }
            let rec = EpochRecord {
                epoch: state.epoch,
                step: state.step,
                train_loss: state.loss_sum / state.loss_count.max(1) as f64,
                val_loss: e.loss,
                val_top1: e.top1,
                val_top5: e.top5,
                lr,
                seconds: epoch_start.elapsed().as_secs_f64(),
            };
            if let Some(m) = &self.metrics {
                m.epoch(&rec)?;
            }
            (self.on_event)(&Event::Epoch(rec));
            result = Some(e);
        }
        (self.state.loss_sum, self.state.loss_count) = (0.0, 0);
        self.save()?;
        // The figure after the checkpoint: a kill or a full disk while drawing it costs no training.
        if let (Some(m), Some(_)) = (&self.metrics, &result) {
            redraw(m);
        }
        Ok(result)
    }

    /// A checkpoint of the current state (metrics flushed first, so they cover it); rank 0's
    /// alone in a data-parallel run (every rank holds the same state).
    fn save(&mut self) -> Result<()> {
        let Some(m) = &self.metrics else {
            return Ok(());
        };
        m.sync()?;
        let weights = self.params.gather_cpu()?;
        for (name, w) in &weights {
            let bad = w.f_isfinite()?.f_logical_not()?;
            if bad.f_any()?.int64_value(&[]) != 0 {
                let value = w.f_masked_select(&bad)?.double_value(&[0]);
                let (step, epoch) = (self.state.step, self.state.epoch);
                return Err(diverged(&self.tc, format!("a weight of {name}"), value, step, epoch));
            }
        }
        let dir = checkpoint::save(
            &self.tc.out,
            &self.state,
            &weights,
            &gather_velocity(&self.params, &self.sgd)?,
            self.tc.keep,
        )?;
        (self.on_event)(&Event::Checkpoint(dir));
        Ok(())
    }

    /// The end of the run: its last evaluation (made now if there was none: asked to stop, or
    /// nothing left to train), then the figure. `stop()` ends an evaluation made here with
    /// `Error::Interrupted` when the caller discards a stopped run's result (all is saved).
    fn finish(mut self, last_eval: Option<EvalResult>, stop: &dyn Fn() -> bool) -> Result<EvalResult> {
        let e = match last_eval {
            Some(e) => e,
            None if self.eval_on_stop => self.evaluate(&|| false)?,
            None => self.evaluate(stop)?,
        };
        if let Some(m) = &self.metrics {
            redraw(m);
        }
        Ok(e)
    }
}

/// A non-finite training loss at the step being taken stops the run.
fn finite_loss(tc: &TrainConfig, state: &TrainState, loss: f64) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(diverged(
        tc,
        "the training loss".into(),
        loss,
        state.step + 1,
        state.epoch,
    ))
}

/// The error that stops a diverged run: `what` became `value` at `step`; nothing of it is saved.
fn diverged(tc: &TrainConfig, what: String, value: f64, step: u64, epoch: u64) -> Error {
    Error::Diverged {
        what,
        loss: value,
        step,
        epoch,
        last_good: checkpoint::find_latest(&tc.out).ok(),
    }
}

/// Redraws curves.png. A figure is derived from metrics.jsonl and epochs.csv (which are written
/// first), so failing to write it (a full disk) is a warning and training goes on; the next epoch,
/// or a `--resume` of the finished run, draws it again.
fn redraw(m: &Metrics) {
    if let Err(e) = m.plot() {
        crate::say::note(&format!(
            "warning: {e}; curves.png is left as it was (drawn again at the next epoch's end, or by --resume)"
        ));
    }
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
