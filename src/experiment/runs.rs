//! Where an experiment's runs live and when a finished one is reused: a folder per run, named by
//! the settings and inputs that shape its result.
use super::{Progress, RunResult};
use crate::error::{io, Error, Result};
use crate::train::TrainConfig;
use std::path::{Path, PathBuf};

/// The folder of one run: the settings that differ between arms, seeds and sweeps, readable,
/// then a fingerprint of every setting that shapes its result, of Fig. 1's `targets` and of the
/// `inputs` ([`inputs_key`]), so that runs made with other settings (another `--epochs`, other
/// data) live beside each other.
pub(super) fn run_dir(root: &Path, t: &TrainConfig, targets: &[f64], inputs: u64) -> PathBuf {
    let act = t.activation.name();
    let pool = t.pool_kernel.map_or("".into(), |k| format!("-pool{k}"));
    let drop = t.dropout.map_or("".into(), |p| format!("-drop{p}"));
    let lrn = if t.lrn { "" } else { "-nolrn" };
    let text = serde_json::to_string(&(result_shaping(t), targets, inputs)).expect("plain record");
    let hash = crate::files::fnv(crate::files::FNV_START, text.as_bytes());
    root.join(format!(
        "{}-{}-{act}{lrn}{pool}{drop}-lr{}-seed{}-{:08x}",
        t.preset,
        t.input_size,
        t.lr,
        t.seed,
        hash & 0xffff_ffff
    ))
}

/// A key of what the runs read besides their settings: the data's samples (both splits), the
/// statistics file and the initial weights, so that other contents at the same paths make other
/// runs (a rerun on changed images reused the results of the old ones).
pub(super) fn inputs_key(t: &TrainConfig) -> Result<u64> {
    use crate::data::{Dataset, Split};
    use crate::files::{fnv, stamp, FNV_START};
    let mut h = FNV_START;
    for split in [Split::Train, Split::Test] {
        let ds = match &t.data {
            Some(p) => Dataset::open(p, split)?,
            None => Dataset::fashion_mnist(split)?,
        };
        h = fnv(h, &ds.files_key().to_le_bytes());
    }
    for p in [&t.stats, &t.init_from].into_iter().flatten() {
        let file = if p.is_dir() {
            crate::checkpoint::find_latest_weights(p)?.join("weights.safetensors")
        } else {
            p.clone()
        };
        h = stamp(fnv(h, file.as_os_str().as_encoded_bytes()), &file);
    }
    Ok(h)
}

/// `t` without the settings that cannot change a run's result: its folder, threads, which
/// checkpoints are kept.
fn result_shaping(t: &TrainConfig) -> TrainConfig {
    TrainConfig {
        out: PathBuf::new(),
        threads: 0,
        keep: 0,
        checkpoint_every: 0,
        ..t.clone()
    }
}

/// The run's result if it finished (`result_path` exists: it is written last, whole). Not ours to
/// delete: one this build cannot read, or made with other settings than its folder's name says,
/// is an error.
pub(super) fn finished(t: &TrainConfig, targets: &[f64], result_path: &Path) -> Result<Option<RunResult>> {
    let text = match std::fs::read_to_string(result_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(result_path)(e)),
    };
    let r = serde_json::from_str::<RunResult>(&text).map_err(|e| {
        Error::Config(format!(
            "{}: a finished run's result this build cannot read ({e}): move the folder away or pick another --out",
            result_path.display()
        ))
    })?;
    if result_shaping(&r.config) != result_shaping(t) || r.targets != targets {
        return Err(Error::Config(format!(
            "{} holds a finished run made with other settings than its folder's name says: move it away or pick \
             another --out",
            t.out.display()
        )));
    }
    Ok(Some(r))
}

/// The state of the newest complete checkpoint an unfinished earlier attempt at `t` left (it is
/// continued from there); `None`: there is none. Not ours to delete: one this build cannot read,
/// or made with other settings than its folder's name says, is an error (as a finished run's).
pub(super) fn resumable(t: &TrainConfig) -> Result<Option<crate::checkpoint::TrainState>> {
    let Ok(dir) = crate::checkpoint::find_latest(&t.out) else {
        return Ok(None); // no checkpoints/ folder, or no complete checkpoint in it
    };
    let state = crate::checkpoint::read_state(&dir)?;
    if result_shaping(&state.config) != result_shaping(t) {
        return Err(Error::Config(format!(
            "{} holds a checkpoint made with other settings than its folder's name says: move the run away or \
             pick another --out",
            dir.display()
        )));
    }
    Ok(Some(state))
}

/// Where an unfinished earlier attempt at `t` continues: its newest checkpoint's step, with
/// `progress` replayed from its metrics up to there (an unreadable line dropped with a warning, as
/// a resume drops it). `None` (a fresh start): no complete checkpoint, a step or time limit (it
/// counts this invocation's steps: a continued run would train past the uninterrupted one), or
/// targets all reached already (the run stopped there; continuing would train one more step). A
/// checkpoint this build cannot read, or of other settings, is an error naming it (a fresh start
/// deleted it).
pub(super) fn continue_from(t: &TrainConfig, progress: &Progress) -> Result<Option<u64>> {
    if t.max_steps.is_some() || t.time_budget_s.is_some() {
        return Ok(None);
    }
    let Some(state) = resumable(t)? else {
        return Ok(None);
    };
    let at = crate::metrics::ResumeAt {
        step: state.step,
        epoch: state.epoch,
    };
    let done = crate::metrics::Metrics::open(&t.out, Some(at))?.steps()?;
    done.iter().for_each(|r| {
        progress.record(r);
    });
    Ok((!progress.all_reached()).then_some(state.step))
}

/// `t` with its folder, data, statistics and initial weights as absolute paths.
pub(super) fn absolute_paths(t: &TrainConfig) -> Result<TrainConfig> {
    let abs = |p: &Path| std::path::absolute(p).map_err(io(p));
    let opt = |p: &Option<PathBuf>| p.as_deref().map(abs).transpose();
    Ok(TrainConfig {
        out: abs(&t.out)?,
        data: opt(&t.data)?,
        stats: opt(&t.stats)?,
        init_from: opt(&t.init_from)?,
        ..t.clone()
    })
}
