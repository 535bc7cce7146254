//! Checkpoints: a folder per save, `ckpt-<step>/` with `weights.safetensors` (whole float32
//! parameters, the names of `Config::param_shapes`, loadable from Python), `optimizer.safetensors`
//! (momentum buffers) and `state.json` (format tag, training config, epoch/step, schedule, best
//! accuracy, class names, the running loss of the epoch in progress).
//!
//! Crash safety (RELIABILITY.md): a save writes `.ckpt-<step>.tmp/`, the two safetensors files
//! first and `state.json` last (itself written to `state.json.partial` and renamed), fsyncing
//! each file and the folder: a folder holding `state.json` is complete. A checkpoint of the same
//! step (an epoch end right after a `--checkpoint-every` save) is renamed to `.ckpt-<step>.old/`,
//! the new folder renamed in, and only then the old one removed; pruning renames before removing
//! too. So at every instant some complete checkpoint exists under a name [`find_latest`] reads: the
//! newest complete `ckpt-<step>/`, or, after a crash between two renames, the newest complete
//! hidden copy. A failed save (full disk) removes its temporary folder; the next save and every
//! `--resume` ([`recover`]) clear what a crash left behind. The last `keep` checkpoints and the
//! best one are kept.
use crate::config::Config;
use crate::error::{io, Error, Result};
use crate::fault;
use crate::files::fsync;
use crate::settings::TrainConfig;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use tch::Tensor;

mod state;
mod tensors;
#[cfg(test)]
mod tests;
pub use state::{TrainState, NETWORK};
pub use tensors::check_tensors;
pub(crate) use tensors::read_tensors;
pub use tensors::save_tensors;
use tensors::write_tensors;

pub const FORMAT: &str = "alexnet_rs-checkpoint-v1";

pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainState,
    pub weights: BTreeMap<String, Tensor>,
    pub velocity: BTreeMap<String, Tensor>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checkpoint folder names: `ckpt-<step>` (rank 2), and the hidden `.ckpt-<step>.tmp` (1, being
/// written) and `.ckpt-<step>.old` (0, being replaced or pruned). The rank breaks ties.
fn parse_name(name: &str) -> Option<(u64, u8)> {
    if let Some(s) = name.strip_prefix("ckpt-") {
        return s.parse().ok().map(|s| (s, 2));
    }
    let hidden = name.strip_prefix(".ckpt-")?;
    let (s, rank) = match hidden.rsplit_once('.')? {
        (s, "tmp") => (s, 1),
        (s, "old") => (s, 0),
        _ => return None,
    };
    s.parse().ok().map(|s| (s, rank))
}

/// Whether `name` is a checkpoint folder's (visible or a crash's hidden copy).
pub(crate) fn is_checkpoint_name(name: &str) -> bool {
    parse_name(name).is_some()
}

fn step_of(name: &str) -> Option<u64> {
    parse_name(name).filter(|&(_, rank)| rank == 2).map(|(s, _)| s)
}

/// Whether `dir` holds a whole checkpoint (`state.json` is written last).
pub fn is_complete(dir: &Path) -> bool {
    lacking(dir, false).is_empty()
}

/// The files of a checkpoint that `dir` lacks: of the weights, `state.json` and (unless
/// `weights_only`: what evaluation reads) `optimizer.safetensors`, the momentum a resumed run
/// continues with. Only a user makes a visible checkpoint without it (weights shared alone);
/// a crash never does.
fn lacking(dir: &Path, weights_only: bool) -> Vec<&'static str> {
    let files: &[&'static str] = if weights_only {
        &["weights.safetensors", "state.json"]
    } else {
        &["weights.safetensors", "optimizer.safetensors", "state.json"]
    };
    files.iter().copied().filter(|f| !dir.join(f).is_file()).collect()
}

/// Saves a checkpoint under `run/checkpoints/`, keeping the newest `keep` and the best ones
/// (pruned before the write too). Returns its folder.
pub fn save(
    run: &Path,
    state: &TrainState,
    weights: &BTreeMap<String, Tensor>,
    velocity: &BTreeMap<String, Tensor>,
    keep: usize,
) -> Result<PathBuf> {
    let root = run.join("checkpoints");
    crate::files::create_dir(&root)?;
    remove_leftovers(&root)?;
    // First down to `keep` (a resumed run's new --keep on a full disk freed nothing: the write
    // failed before the prune). The newest stays, and the best on disk (when this state is a new
    // best, its own best_step names a step not written yet), so a failed write loses nothing.
    let best_on_disk = find_latest(&root)
        .and_then(|d| read_state(&d))
        .ok()
        .and_then(|s| s.best_step);
    prune(&root, keep.max(1), &[state.best_step, best_on_disk])?;
    let name = format!("ckpt-{:09}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if let Err(e) = write_folder(&tmp, state, weights, velocity) {
        // A partial folder would keep a full disk full (and the next save failing).
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = fault::point("ckpt-tmp-written") {
        let _ = fs::remove_dir_all(&tmp);
        return Err(io(&tmp)(e));
    }
    let dst = root.join(&name);
    replace(&root, &tmp, &dst, &root.join(format!(".{name}.old")))?;
    fault::point("ckpt-before-prune").map_err(io(&root))?;
    prune(&root, keep.max(1), &[state.best_step])?;
    Ok(dst)
}

/// The temporary folder: tensors, then `state.json` (the completion marker), each fsynced.
fn write_folder(
    tmp: &Path,
    state: &TrainState,
    weights: &BTreeMap<String, Tensor>,
    velocity: &BTreeMap<String, Tensor>,
) -> Result<()> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).map_err(io(tmp))?;
    }
    crate::files::create_dir(tmp)?;
    write_tensors(&tmp.join("weights.safetensors"), weights)?;
    fault::point("ckpt-tmp-partial").map_err(io(tmp))?;
    write_tensors(&tmp.join("optimizer.safetensors"), velocity)?;
    let json =
        serde_json::to_string_pretty(state).map_err(|e| Error::Config(format!("cannot serialise state: {e}")))?;
    crate::files::write(&tmp.join("state.json"), json.as_bytes())?;
    fsync(tmp)
}

/// Puts the finished `tmp` in place of `dst`. A `dst` of the same step is renamed to `old`
/// (not deleted) first and removed last, so a crash at any point leaves a complete copy.
fn replace(root: &Path, tmp: &Path, dst: &Path, old: &Path) -> Result<()> {
    let had_old = dst.exists();
    if had_old {
        fs::rename(dst, old).map_err(io(dst))?;
    }
    let moved = (if had_old { fault::point("ckpt-old-away") } else { Ok(()) }).and_then(|()| fs::rename(tmp, dst));
    if let Err(e) = moved {
        if had_old {
            let _ = fs::rename(old, dst);
        }
        let _ = fs::remove_dir_all(tmp);
        return Err(io(dst)(e));
    }
    fault::point("ckpt-renamed").map_err(io(dst))?;
    fsync(root)?;
    if had_old {
        fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(())
}

/// Removes a checkpoint folder: renamed to its hidden `.old` name first, so that no visible
/// `ckpt-<step>/` is ever half-deleted.
fn remove(root: &Path, name: &str) -> Result<()> {
    remove_via(root, name, "old")
}

/// [`remove`] through the hidden name `.<name>.<suffix>` (`old` or `tmp`).
fn remove_via(root: &Path, name: &str, suffix: &str) -> Result<()> {
    let old = root.join(format!(".{name}.{suffix}"));
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    let dir = root.join(name);
    fs::rename(&dir, &old).map_err(io(&dir))?;
    fs::remove_dir_all(&old).map_err(io(&old))
}

/// Deletes the hidden `.tmp`/`.old` folders that a crash or a failed save left behind.
fn remove_leftovers(root: &Path) -> Result<()> {
    for e in fs::read_dir(root).map_err(io(root))?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && parse_name(&name).is_some() {
            let p = e.path();
            fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Removes all but the newest `keep` checkpoints and the `best` ones.
fn prune(root: &Path, keep: usize, best: &[Option<u64>]) -> Result<()> {
    let mut steps: Vec<u64> = fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok().and_then(|e| step_of(&e.file_name().to_string_lossy())))
        .collect();
    steps.sort_unstable();
    let n = steps.len();
    for &s in steps.iter().take(n.saturating_sub(keep)) {
        if !best.contains(&Some(s)) {
            remove(root, &format!("ckpt-{s:09}"))?;
        }
    }
    Ok(())
}

fn checkpoints_root(path: &Path) -> PathBuf {
    if path.join("checkpoints").is_dir() {
        path.join("checkpoints")
    } else {
        path.to_path_buf()
    }
}

/// The newest complete checkpoint folder under `path` (a run folder, its `checkpoints/`, or a
/// checkpoint folder itself). Incomplete folders are skipped; after a crash between two renames
/// the newest complete hidden copy (`.ckpt-<step>.tmp/` or `.old/`) counts (read-only: `--resume`
/// moves it back into place with [`recover`]).
pub fn find_latest(path: &Path) -> Result<PathBuf> {
    newest(path, false)
}

/// [`find_latest`] for a reader of the weights alone (eval, predict, `--init-from`): a visible
/// checkpoint without its optimizer state counts too.
pub fn find_latest_weights(path: &Path) -> Result<PathBuf> {
    newest(path, true)
}

fn newest(path: &Path, weights_only: bool) -> Result<PathBuf> {
    if path.is_file() {
        return Err(bad(
            path,
            "is a file: expected a run folder or a checkpoint folder (a weights file, .safetensors or .pth, \
             is what `train --init-from` takes)",
        ));
    }
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let root = checkpoints_root(path);
    let mut incomplete = Vec::new();
    let mut best: Option<((u64, u8), PathBuf)> = None;
    for e in fs::read_dir(&root).map_err(io(&root))?.filter_map(|e| e.ok()) {
        let Some(key) = parse_name(&e.file_name().to_string_lossy()) else {
            continue;
        };
        // A hidden copy (a crash's) counts only whole.
        let lacks = lacking(&e.path(), weights_only && key.1 == 2);
        if !lacks.is_empty() {
            incomplete.push(format!(
                "{} lacks {}",
                e.file_name().to_string_lossy(),
                lacks.join(" and ")
            ));
        } else if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, e.path()));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        let why = if incomplete.is_empty() {
            "no checkpoint here (expected ckpt-<step>/ folders)".to_string()
        } else {
            format!("no complete checkpoint here ({})", incomplete.join("; "))
        };
        bad(&root, why)
    })
}

/// Before a `--resume`: moves the newest complete checkpoint back to its visible name if a crash
/// left it hidden, and deletes the hidden leftovers. Returns the checkpoint folder.
pub fn recover(path: &Path) -> Result<PathBuf> {
    let latest = find_latest(path)?;
    let (Some((step, _)), Some(root)) = (
        latest.file_name().and_then(|n| parse_name(&n.to_string_lossy())),
        latest.parent(),
    ) else {
        return Ok(latest); // a checkpoint folder named by the caller: left as it is
    };
    let name = format!("ckpt-{step:09}");
    let dst = root.join(&name);
    if latest != dst {
        if dst.exists() {
            // Incomplete: removed through the hidden name that is not the copy being restored.
            let restoring_old = latest
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".old"));
            remove_via(root, &name, if restoring_old { "tmp" } else { "old" })?;
        }
        fs::rename(&latest, &dst).map_err(io(&dst))?;
        fsync(root)?;
    }
    // A crash leaves only hidden folders: a visible incomplete one is a user's (weights shared
    // without their momentum, a copy cut short), never deleted; a newer one stops the resume.
    for e in fs::read_dir(root).map_err(io(root))?.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        if step_of(&n).is_some_and(|s| s > step) && !is_complete(&e.path()) {
            return Err(Error::Config(format!(
                "{} lacks {} (of a checkpoint a resumed run continues from), so the run cannot continue from \
                 its newest step; move that folder out of {} to resume from {}",
                e.path().display(),
                lacking(&e.path(), false).join(" and "),
                root.display(),
                dst.display()
            )));
        }
    }
    remove_leftovers(root)?;
    Ok(dst)
}

/// Writes whole weights (e.g. from Python) as a checkpoint that `alexnet eval`/`predict` and
/// `--resume` accept: zero momentum, step 0, the given class names (default "0".."n-1").
pub fn save_weights(
    run: &Path,
    preset: crate::Preset,
    input_size: u32,
    weights: &BTreeMap<String, Tensor>,
    classes: Option<Vec<String>>,
) -> Result<PathBuf> {
    let fc = Config::preset(preset, 1)?
        .fcs
        .last()
        .map(|f| f.name.clone())
        .unwrap_or_default();
    let class_weight = format!("{fc}.weight");
    let n = match weights.get(&class_weight).map(Tensor::size).as_deref() {
        Some(&[n, _]) if (1..=crate::config::MAX_CLASSES).contains(&n) => n,
        Some(shape) => {
            return Err(Error::Shape(format!(
                "`{class_weight}` has shape {shape:?}: expected (classes, features), 1 to {} classes",
                crate::config::MAX_CLASSES
            )))
        }
        None => {
            return Err(Error::MissingParam(
                class_weight,
                weights.keys().cloned().collect::<Vec<_>>().join(", "),
            ))
        }
    };
    let classes = classes.unwrap_or_else(|| (0..n).map(|i| i.to_string()).collect());
    crate::data::check_class_names(&classes)?; // eval and predict match names to labels
    let mut cfg = Config::preset(preset, classes.len() as i64)?;
    cfg.input_size = i64::from(input_size);
    cfg.spatial_sizes(cfg.input_size)?;
    let weights: BTreeMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                v.detach()
                    .f_to_kind(tch::Kind::Float)?
                    .f_to(tch::Device::Cpu)?
                    .f_contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    check_tensors(run, &cfg, &weights)?;
    // Beside a training run's checkpoints this step-0 one would not be the newest (and pruning
    // could delete it); a save of its own (step 0) is replaced.
    // A crash's hidden copy counts: saving would delete it as a leftover; so do checkpoints
    // without their optimizer state (pruning would delete them).
    let newest = find_latest_weights(run)
        .ok()
        .and_then(|d| d.file_name().and_then(|n| parse_name(&n.to_string_lossy())));
    if let Some((step, _)) = newest.filter(|&(s, _)| s > 0) {
        return Err(Error::Config(format!(
            "{} already holds a training run (checkpoints up to step {step}): save into another folder",
            run.display()
        )));
    }
    let tc = TrainConfig {
        preset,
        input_size,
        out: run.to_path_buf(),
        ..TrainConfig::default()
    };
    // Its state.json could not say a folder that is not UTF-8 text.
    tc.check_paths()?;
    // Nor while a training process holds the folder (before its first checkpoint).
    let _lock = crate::files::RunLock::acquire(run)?;
    let state = TrainState::start(tc, classes);
    let velocity = weights.iter().map(|(k, v)| (k.clone(), v.zeros_like())).collect();
    save(run, &state, &weights, &velocity, 1)
}

/// Loads and validates the checkpoint at (or newest under) `path`, for resuming it.
pub fn load(path: &Path) -> Result<Checkpoint> {
    read_newest(path, false, |dir| read(dir, true))
}

/// [`load`] without the optimizer state (an empty `velocity`), for a reader of the weights: the
/// newest checkpoint that has them, stripped of its optimizer state or not.
pub fn load_weights(path: &Path) -> Result<Checkpoint> {
    read_newest(path, true, |dir| read(dir, false))
}

/// `read` of the newest checkpoint under `path`. A training process may prune or replace that
/// folder while another reads it (`alexnet eval` of a run in progress): an error from a folder
/// gone or replaced since it was found is that race, not damage, and the newest is found again.
fn read_newest(path: &Path, weights_only: bool, read: impl Fn(PathBuf) -> Result<Checkpoint>) -> Result<Checkpoint> {
    use std::os::unix::fs::MetadataExt;
    let id = |d: &Path| fs::metadata(d).ok().map(|m| (m.dev(), m.ino()));
    for _ in 0..5 {
        let dir = newest(path, weights_only)?;
        let found = id(&dir);
        match read(dir.clone()) {
            Err(_) if id(&dir) != found => continue,
            r => return r,
        }
    }
    read(newest(path, weights_only)?)
}

/// The training state (`state.json`) of the checkpoint folder `dir`, checked for its format.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let sp = dir.join("state.json");
    let text = crate::files::read_small_text(&sp)?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| bad(&sp, format!("not an alexnet_rs training state: {e}")))?;
    if state.format != FORMAT {
        return Err(bad(&sp, format!("format `{}`, expected `{FORMAT}`", state.format)));
    }
    check_state(dir, &state).map_err(|why| bad(&sp, why))?;
    Ok(state)
}

/// What a state written by [`save`] holds (a hand-edited or foreign one was trusted: a step past
/// its folder's name made an older checkpoint the newest, a negative lr trained on).
fn check_state(dir: &Path, state: &TrainState) -> std::result::Result<(), String> {
    let named = dir.file_name().and_then(|n| parse_name(&n.to_string_lossy()));
    if let Some((step, _)) = named.filter(|&(step, _)| step != state.step) {
        return Err(format!(
            "its step is {} but its folder's name says step {step}",
            state.step
        ));
    }
    if state.network > NETWORK {
        return Err(format!(
            "network revision {} is newer than this build's ({NETWORK}): read it with a newer alexnet_rs",
            state.network
        ));
    }
    let s = &state.schedule;
    if let Some((key, lr)) = [("lr", s.lr), ("base_lr", s.base_lr)]
        .into_iter()
        .find(|(_, lr)| !(*lr > 0.0 && lr.is_finite()))
    {
        return Err(format!(
            "its schedule's {key} is {lr}: a learning rate is positive and finite"
        ));
    }
    crate::data::check_class_names(&state.classes).map_err(|e| e.to_string())
}

fn read(dir: PathBuf, with_optimizer: bool) -> Result<Checkpoint> {
    let sp = dir.join("state.json");
    let state = read_state(&dir)?;
    let cfg = state
        .config
        .model_config(state.classes.len() as i64)
        .map_err(|e| bad(&sp, format!("its settings do not describe a network: {e}")))?;
    if let Some(what) = state.changed_network(&cfg) {
        crate::say::note(&format!("warning: {}: {what}", dir.display()));
    }
    let wp = dir.join("weights.safetensors");
    let weights = read_tensors(&wp)?;
    check_tensors(&wp, &cfg, &weights)?;
    let mut velocity = BTreeMap::new();
    if with_optimizer {
        let op = dir.join("optimizer.safetensors");
        velocity = read_tensors(&op)?;
        check_tensors(&op, &cfg, &velocity)?;
    }
    Ok(Checkpoint {
        dir,
        state,
        weights,
        velocity,
    })
}
