//! A run folder reloaded: the settings a resumed run takes from its caller, and the run's own
//! copy of its `alexnet stats` file, so that eval, predict and resume find it wherever the run
//! folder goes and whatever the working directory.
use crate::checkpoint::{self, Checkpoint};
use crate::data::Dataset;
use crate::error::{io, Error, Result};
use crate::files::RunLock;
use crate::settings::TrainConfig;
use crate::train::Group;
use std::path::Path;

/// The run's copy of the statistics file it is trained with.
const STATS: &str = "stats.safetensors";

/// The run folder of a checkpoint folder (`<run>/checkpoints/ckpt-<step>`; `.` for a relative
/// `checkpoints/ckpt-<step>`, given from inside the run folder). A run folder is none, even one
/// in a folder named `checkpoints` (`/data/checkpoints/run1` was taken for a checkpoint of
/// `/data`, and could not be resumed).
fn run_folder(ckpt: &Path) -> Option<&Path> {
    let name = ckpt.file_name()?.to_string_lossy();
    // ckpt-<step>, or a crash's hidden complete copy (.ckpt-<step>.tmp / .old).
    if !checkpoint::is_checkpoint_name(&name) || ckpt.join("checkpoints").is_dir() {
        return None;
    }
    let run = ckpt
        .parent()
        .filter(|p| p.ends_with("checkpoints"))
        .and_then(Path::parent)?;
    Some(here_if_empty(run))
}

/// `path`, or `.` for the empty path (the parent of a relative `checkpoints`).
fn here_if_empty(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

/// A complete checkpoint folder that is in no run folder (copied out of one): it has no run to
/// recover or to continue in.
fn loose(path: &Path) -> bool {
    run_folder(path).is_none() && checkpoint::is_complete(path)
}

/// The refusal to resume a checkpoint outside a run folder without `--out`.
pub(super) fn check_loose(path: &Path, tc: &TrainConfig) -> Result<()> {
    if loose(path) && !tc.gave("out", tc.out != TrainConfig::default().out) {
        return Err(Error::Config(format!(
            "{} is a checkpoint outside a run folder (<run>/checkpoints/ckpt-<step>): give --out, the \
             folder the continued run writes",
            path.display()
        )));
    }
    Ok(())
}

/// What a run keeps in its folder from elsewhere, at each start (crash-safe): its copy of its
/// statistics file, and, for a run resumed into another folder, the resumed run's metrics
/// history (metrics.jsonl, epochs.csv; cut back to the checkpoint when the metrics are opened).
/// `resumed`: the folder of the checkpoint the run resumes.
pub(super) fn fill_out(tc: &TrainConfig, resumed: Option<&Path>) -> Result<()> {
    let continued = resumed.and_then(run_folder).is_some_and(|r| same_folder(r, &tc.out));
    let copy = tc.out.join(STATS);
    if !continued {
        // The run's own --stats file may be the one in its folder (`stats --out run/...`).
        let own = tc.stats.as_deref().is_some_and(|s| same_folder(s, &copy));
        set_aside_earlier(&tc.out, if own { &EARLIER[..2] } else { &EARLIER })?;
    }
    match &tc.stats {
        Some(src) => {
            let bytes = std::fs::read(src).map_err(io(src))?;
            crate::files::write(&copy, &bytes)?;
        }
        // Not this run's (a continued run without statistics has none of its own).
        None if copy.is_file() => std::fs::remove_file(&copy).map_err(io(&copy))?,
        None => {}
    }
    let Some(from) = resumed.and_then(run_folder) else {
        return Ok(());
    };
    if same_folder(from, &tc.out) {
        return Ok(());
    }
    for name in ["metrics.jsonl", "epochs.csv"] {
        let src = from.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(io(&src))?;
            crate::files::write(&tc.out.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// The files a run keeps in its folder besides its checkpoints.
const EARLIER: [&str; 3] = ["metrics.jsonl", "epochs.csv", STATS];

/// Moves the files of an earlier run that left no checkpoint in `out` (it died before its first,
/// or they were deleted), which a new run there would replace, into a new `out/earlier-<n>/`: of
/// `EARLIER`, those named in `names`.
fn set_aside_earlier(out: &Path, names: &[&'static str]) -> Result<()> {
    let found: Vec<&str> = names
        .iter()
        .copied()
        .filter(|f| out.join(f).metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    let dir = (1..)
        .map(|n| out.join(format!("earlier-{n}")))
        .find(|d| !d.exists())
        .expect("a free name");
    crate::files::create_dir(&dir)?;
    for f in &found {
        std::fs::rename(out.join(f), dir.join(f)).map_err(io(&out.join(f)))?;
    }
    crate::files::fsync(out)?;
    crate::say::note(&format!(
        "{} held an earlier run's {} and no checkpoint of it: moved to {}",
        out.display(),
        found.join(", "),
        dir.display()
    ));
    Ok(())
}

/// Puts a checkpoint a crash left hidden back in place and clears leftovers (RELIABILITY.md),
/// in the run folder (or checkpoint folder) `path`, on rank 0 alone, then waits for every rank:
/// ranks that did it at once raced each other's renames and removals. A folder without a
/// checkpoint is left alone. Returns rank 0's hold on the run folder (see [`RunLock`]), taken
/// before the recovery.
pub fn recover_run(path: &Path, group: Option<&Group>) -> Result<Option<RunLock>> {
    let mut lock = None;
    // A loose checkpoint: nothing of a run to recover (its folder's other entries are not ours).
    if group.is_none_or(|g| g.rank == 0) && !loose(path) && checkpoint::find_latest(path).is_ok() {
        // Not while another process trains the run: its newest checkpoint may be half renamed.
        let run = run_of(path);
        lock = Some(RunLock::acquire(run)?);
        // The run's newest, not `path`'s: resuming an older checkpoint deleted a crash's hidden
        // newer one as a leftover (and then was not refused as older than the newest).
        checkpoint::recover(run)?;
    }
    group.map_or(Ok(()), Group::barrier)?;
    Ok(lock)
}

/// The run folder that `path` (a run folder, its `checkpoints/` or one of its checkpoint
/// folders) belongs to. A folder that holds `checkpoints/` is a run folder, whatever its name.
pub fn run_of(path: &Path) -> &Path {
    match path.parent() {
        Some(run) if path.ends_with("checkpoints") && path.is_dir() && !path.join("checkpoints").is_dir() => {
            here_if_empty(run)
        }
        _ => run_folder(path).unwrap_or(path),
    }
}

/// Whether `a` and `b` are the same folder (or file), both existing.
pub(super) fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The settings checkpoint `c` was trained with; its statistics file is the run's copy when
/// there is one (and it was trained with one).
pub fn trained_config(c: &Checkpoint) -> TrainConfig {
    let mut t = c.state.config.clone();
    // What its schedule uses (a state written before the setting existed says the default).
    t.plateau_patience = c.state.schedule.patience;
    if let Some(own) = run_folder(&c.dir).map(|r| r.join(STATS)).filter(|p| p.is_file()) {
        if t.stats.is_some() {
            t.stats = Some(own);
        }
    }
    t
}

/// Refuses to train into a folder that holds another run's checkpoints (a fresh run there, or a
/// resumed one given that `--out`): its metrics would be replaced, its checkpoints pruned, and its
/// newer steps would stay the "newest checkpoint" that eval and predict read. And refuses to
/// resume a run from a checkpoint older than its newest: that would cut its metrics back and
/// prune the newer checkpoints.
pub(super) fn check_out(tc: &TrainConfig, resumed: Option<&Checkpoint>) -> Result<()> {
    if let Some((c, run)) = resumed.and_then(|c| run_folder(&c.dir).map(|r| (c, r))) {
        let newest = checkpoint::find_latest(run)?;
        if !same_folder(&newest, &c.dir) {
            return Err(Error::Config(format!(
                "{} is not the newest checkpoint of its run ({}): resuming from it would discard the \
                 steps after it; resume the run folder {}, or copy the checkpoint folder elsewhere to \
                 start a new run from it",
                c.dir.display(),
                newest.display(),
                run.display()
            )));
        }
    }
    // Checkpoints shared without their optimizer state count: a new run would prune them.
    let Ok(newest) = checkpoint::find_latest_weights(&tc.out) else {
        return Ok(());
    };
    if resumed
        .and_then(|c| run_folder(&c.dir))
        .is_some_and(|r| same_folder(r, &tc.out))
    {
        return Ok(());
    }
    let how = if checkpoint::is_complete(&newest) {
        "continue it with --resume (Python: resume=), or train into another --out"
    } else {
        "its newest has no optimizer state to resume: start from its weights with --init-from in another --out"
    };
    Err(Error::Config(format!(
        "{} already holds a run (newest checkpoint {}): {how}; a new run there would replace its \
         metrics and prune its checkpoints",
        tc.out.display(),
        newest.display()
    )))
}

/// Refuses to resume on a training set whose classes are not the run's (`--data` names another).
pub(super) fn check_classes(resumed: Option<&Checkpoint>, train: &Dataset) -> Result<()> {
    match resumed.filter(|c| c.state.classes != train.classes) {
        Some(c) => Err(Error::Config(format!(
            "the run was trained on the classes {:?}, but {} has {:?}: --resume needs the run's training data",
            c.state.classes,
            train.origin.display(),
            train.classes
        ))),
        None => Ok(()),
    }
}

/// A resumed run's schedule for its (maybe new) `--epochs`: a cosine schedule follows the curve
/// that ends at the new last epoch (it ran on past the old end, where the cosine climbs back to
/// the base lr). From epoch `at` on, the lr is then that curve's, as in a run planned that long.
pub(crate) fn replan(schedule: &mut crate::optim::Schedule, epochs: u64, at: u64) {
    if schedule.epochs == epochs {
        return;
    }
    if schedule.kind == crate::optim::ScheduleKind::Cosine && at < epochs {
        let before = schedule.lr_at(at as f64);
        let mut after = schedule.clone();
        after.epochs = epochs;
        crate::say::note(&format!(
            "note: the cosine schedule now ends at epoch {epochs} (it was planned for {}): the lr at epoch {at} is \
             {:.3e} on the new curve ({before:.3e} on the old one)",
            schedule.epochs,
            after.lr_at(at as f64)
        ));
    }
    schedule.epochs = epochs;
}

/// The settings of a resumed run: the checkpoint's, except what is per invocation (step and time
/// budgets, `--keep`), a new `--epochs`, the devices and threads, where the data and stats files are now, and where to
/// write (`--out`, else the run's own folder; a checkpoint outside a run folder needs `--out`).
pub(super) fn resumed_config(tc: &TrainConfig, c: &Checkpoint) -> Result<TrainConfig> {
    let mut t = trained_config(c);
    // A changed model or data setting would break the bit-exact continuation.
    (t.max_steps, t.time_budget_s) = (tc.max_steps, tc.time_budget_s);
    let default = TrainConfig::default();
    if tc.gave("epochs", tc.epochs != default.epochs) {
        t.epochs = tc.epochs;
    }
    if tc.gave("keep", tc.keep != default.keep) {
        t.keep = tc.keep;
    }
    // The machine it runs on now (a run trained on a GPU continues on another, or on the CPU):
    // every placement computes the same function, rounded otherwise (not bit for bit).
    if tc.gave("devices", tc.devices != default.devices) {
        t.devices.clone_from(&tc.devices);
    }
    if tc.gave("threads", tc.threads != default.threads) {
        t.threads = tc.threads;
    }
    // Where the data and its statistics are now (another machine, another mount): the same
    // sets are checked by their classes and fingerprints when the run starts.
    if tc.data.is_some() && tc.gave("data", true) {
        t.data = tc.data.clone();
    }
    if let Some(given) = tc.stats.as_deref().filter(|_| tc.gave("stats", true)) {
        check_same_stats(t.stats.as_deref(), given)?;
        t.stats = Some(given.to_path_buf());
    }
    t.out = if tc.gave("out", tc.out != default.out) {
        tc.out.clone()
    } else {
        // Not the `out` its state records: that may be relative, or another machine's (a
        // checkpoint outside a run folder was refused without --out: `check_loose`).
        run_folder(&c.dir).map_or(t.out, Path::to_path_buf)
    };
    Ok(t)
}

/// `--stats` on a resume says where the run's statistics file is now; other numbers would
/// change what every checkpoint of the run computes (and the run's copy would be replaced).
/// `trained`: the file the run was trained with (its own copy, or the original path).
fn check_same_stats(trained: Option<&Path>, given: &Path) -> Result<()> {
    let Some(trained) = trained else {
        return Err(Error::Config(format!(
            "the run was trained without --stats: resuming it with --stats {} would change the \
             normalisation of its checkpoints; start a new run for that",
            given.display()
        )));
    };
    let Ok(old) = std::fs::read(trained) else {
        return Ok(()); // the original is gone (moved): `given` is taken as it
    };
    if std::fs::read(given).map_err(io(given))? != old {
        return Err(Error::Config(format!(
            "{} holds other statistics than the run was trained with ({}): resuming with them \
             would change what its checkpoints compute; give the same file (wherever it is now), \
             or start a new run",
            given.display(),
            trained.display()
        )));
    }
    Ok(())
}

/// Tells which of the caller's non-default settings a resumed run does not take.
pub(super) fn warn_ignored(given: &TrainConfig, used: &TrainConfig) {
    let (Ok(serde_json::Value::Object(g)), Ok(serde_json::Value::Object(u)), Ok(serde_json::Value::Object(d))) = (
        serde_json::to_value(given),
        serde_json::to_value(used),
        serde_json::to_value(TrainConfig::default()),
    ) else {
        return;
    };
    for (k, v) in &g {
        if v != &u[k] && given.gave(k, v != &d[k]) {
            crate::say::note(&format!(
                "warning: a resumed run keeps its {k} = {} (ignoring {v})",
                u[k]
            ));
        }
    }
}
