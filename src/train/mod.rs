//! Training (`alexnet train`, `alexnet_rs.train`), evaluation (`alexnet eval`) and prediction
//! (`alexnet predict`). Headless, resumable bit for bit, with JSONL/CSV metrics and PNG curves.
//! The default data is Fashion-MNIST from Debian's package (greyscale repeated to three
//! channels, resized to the input size). The settings are [`crate::settings::TrainConfig`].
//!
//! - `run.rs`: the loop (start or resume, step, end of epoch, checkpoints);
//! - `eval.rs`: evaluation of a network or a checkpoint, and prediction on image files;
//! - `resume.rs`: what a resumed run takes from its caller; the run's copy of its stats file;
//! - `dist.rs`: data-parallel ranks (the caller's all-reduce, torch.distributed's);
//! - `neighbours.rs`: Fig. 4, the nearest training images in fc7 space.
mod dist;
mod eval;
mod neighbours;
mod resume;
mod run;

pub use crate::settings::TrainConfig;
pub use dist::{AllReduce, Group};
pub use eval::{
    evaluate, evaluate_checkpoint, evaluate_in, image_tensor, load_trained, predict, top5_note, EvalResult, Trained,
    CONFUSION_CLASSES,
};
pub use neighbours::{neighbours, Neighbours, Queries, Query};
pub use resume::{recover_run, run_of};
pub use run::Run;

use crate::error::Result;
use crate::metrics::{EpochRecord, StepRecord};
use std::path::{Path, PathBuf};

/// What `train` reports as it goes (the CLI's progress bar, Python's `on_step`).
#[derive(Clone, Debug)]
pub enum Event {
    /// Training (re)starts at this position; an epoch has `batches_per_epoch` steps.
    Start {
        epoch: u64,
        batch_in_epoch: u64,
        batches_per_epoch: u64,
    },
    Step(StepRecord),
    Epoch(EpochRecord),
    Checkpoint(PathBuf),
    /// An evaluation of the run is about to look at batch `done` (from 0) of `total` (this
    /// rank's).
    Evaluating {
        done: u64,
        total: u64,
    },
    /// The run stops early on request (`stop()` on this rank or on another one), after the
    /// checkpoint of this step (or of the position before the evaluation it ended).
    Stopped,
}

/// Trains as `tc` says (or continues the checkpoint `resume`), calling `on_event` as it goes;
/// `stop()` returning true ends the run cleanly after a checkpoint. Returns the final evaluation.
pub fn train(
    tc: &TrainConfig,
    resume: Option<&Path>,
    on_event: &mut dyn FnMut(&Event),
    stop: &dyn Fn() -> bool,
) -> Result<EvalResult> {
    Run::start(tc, resume, None, on_event)?.train(stop)
}

/// [`train`] for a caller that discards the result of a run that `stop()` stopped (Python's
/// Ctrl-C, a callback's error): after the checkpoint it returns `Error::Interrupted` at once,
/// without the final evaluation (Ctrl-C waited for one over the whole test set); `stop()` ends
/// that evaluation too when the run ends without having stopped (everything is saved then).
pub fn train_until_stopped(
    tc: &TrainConfig,
    resume: Option<&Path>,
    on_event: &mut dyn FnMut(&Event),
    stop: &dyn Fn() -> bool,
) -> Result<EvalResult> {
    let mut run = Run::start(tc, resume, None, on_event)?;
    run.eval_on_stop = false;
    run.train(stop)
}

/// [`train`] as one rank of a data-parallel `group` (see `dist.rs`).
pub fn train_in(
    tc: &TrainConfig,
    resume: Option<&Path>,
    group: &Group,
    on_event: &mut dyn FnMut(&Event),
    stop: &dyn Fn() -> bool,
) -> Result<EvalResult> {
    Run::start(tc, resume, Some(group), on_event)?.train(stop)
}
