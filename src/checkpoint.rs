//! Checkpoints: a folder per save, `ckpt-<step>/` with `weights.safetensors` (whole float32
//! parameters, the names of `Config::param_shapes`, loadable from Python), `optimizer.safetensors`
//! (momentum buffers) and `state.json` (format tag, training config, epoch/step, schedule, best
//! accuracy, class names). A save writes `.ckpt-<step>.tmp/`, fsyncs every file and the folder,
//! then renames it into place: a process killed mid-save leaves the previous checkpoints intact.
//! The last `keep` checkpoints and the best one are kept.
use crate::config::Config;
use crate::error::{Error, Result};
use crate::optim::Schedule;
use crate::train::TrainConfig;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const FORMAT: &str = "alexnet_rs-checkpoint-v1";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub format: String,
    pub config: TrainConfig,
    /// The epoch in progress and how many of its batches are done.
    pub epoch: u64,
    pub batch_in_epoch: u64,
    /// Optimizer steps so far.
    pub step: u64,
    pub schedule: Schedule,
    pub best_top1: Option<f64>,
    pub best_step: Option<u64>,
    pub classes: Vec<String>,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainState,
    pub weights: BTreeMap<String, Tensor>,
    pub velocity: BTreeMap<String, Tensor>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn fsync(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let list: Vec<(&str, Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v.shallow_clone())).collect();
    Tensor::write_safetensors(&list, path)?;
    fsync(path)
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?.parse().ok()
}

/// Saves a checkpoint under `run/checkpoints/` and prunes old ones. Returns its folder.
pub fn save(
    run: &Path,
    state: &TrainState,
    weights: &BTreeMap<String, Tensor>,
    velocity: &BTreeMap<String, Tensor>,
    keep: usize,
) -> Result<PathBuf> {
    let root = run.join("checkpoints");
    fs::create_dir_all(&root).map_err(io(&root))?;
    let name = format!("ckpt-{:09}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dst = root.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write_tensors(&tmp.join("weights.safetensors"), weights)?;
    crate::fault::point("ckpt-tmp-partial").map_err(io(&tmp))?;
    write_tensors(&tmp.join("optimizer.safetensors"), velocity)?;
    let json =
        serde_json::to_string_pretty(state).map_err(|e| Error::Config(format!("cannot serialise state: {e}")))?;
    let sp = tmp.join("state.json");
    fs::write(&sp, json).map_err(io(&sp))?;
    fsync(&sp)?;
    fsync(&tmp)?;
    crate::fault::point("ckpt-tmp-written").map_err(io(&tmp))?;
    if dst.exists() {
        fs::remove_dir_all(&dst).map_err(io(&dst))?;
        crate::fault::point("ckpt-old-away").map_err(io(&dst))?;
    }
    fs::rename(&tmp, &dst).map_err(io(&dst))?;
    crate::fault::point("ckpt-renamed").map_err(io(&dst))?;
    fsync(&root)?;
    crate::fault::point("ckpt-before-prune").map_err(io(&root))?;
    prune(&root, keep.max(1), state.best_step)?;
    Ok(dst)
}

fn prune(root: &Path, keep: usize, best: Option<u64>) -> Result<()> {
    let mut steps: Vec<u64> = fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok().and_then(|e| step_of(&e.file_name().to_string_lossy())))
        .collect();
    steps.sort_unstable();
    let n = steps.len();
    for &s in steps.iter().take(n.saturating_sub(keep)) {
        if Some(s) != best {
            let d = root.join(format!("ckpt-{s:09}"));
            fs::remove_dir_all(&d).map_err(io(&d))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint folder under `path` (a run folder, its `checkpoints/`, or a
/// checkpoint folder itself).
pub fn find_latest(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let root = if path.join("checkpoints").is_dir() {
        path.join("checkpoints")
    } else {
        path.to_path_buf()
    };
    let entries = fs::read_dir(&root).map_err(io(&root))?;
    let latest = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| step_of(&e.file_name().to_string_lossy()).map(|s| (s, e.path())))
        .max_by_key(|(s, _)| *s);
    latest
        .map(|(_, p)| p)
        .ok_or_else(|| bad(&root, "no checkpoint here (expected ckpt-<step>/ folders)"))
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(bad(path, "missing"));
    }
    Tensor::read_safetensors(path)
        .map(|v| v.into_iter().collect())
        .map_err(|e| {
            bad(
                path,
                format!("not a readable safetensors file (truncated or foreign?): {e}"),
            )
        })
}

/// Checks names and shapes against the config's parameters.
pub fn check_tensors(path: &Path, cfg: &Config, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    for (name, shape) in cfg.param_shapes() {
        let t = tensors.get(&name).ok_or_else(|| {
            bad(
                path,
                format!(
                    "no tensor `{name}`: not a checkpoint of the {} preset with these classes",
                    cfg.preset
                ),
            )
        })?;
        if t.size() != shape {
            return Err(bad(
                path,
                format!(
                    "`{name}` has shape {:?}, the {} preset expects {shape:?}",
                    t.size(),
                    cfg.preset
                ),
            ));
        }
    }
    if let Some(extra) = tensors
        .keys()
        .find(|k| !cfg.param_shapes().iter().any(|(n, _)| n == *k))
    {
        return Err(bad(
            path,
            format!("unexpected tensor `{extra}` for the {} preset", cfg.preset),
        ));
    }
    Ok(())
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
    let n = weights.get(&format!("{fc}.weight")).map_or(0, |t| t.size()[0]);
    let classes = classes.unwrap_or_else(|| (0..n).map(|i| i.to_string()).collect());
    let cfg = Config::preset(preset, classes.len() as i64)?;
    let weights: BTreeMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    check_tensors(run, &cfg, &weights)?;
    let tc = TrainConfig {
        preset: preset.name().into(),
        input_size,
        out: run.to_path_buf(),
        ..TrainConfig::default()
    };
    let state = TrainState {
        format: FORMAT.into(),
        schedule: Schedule::new(tc.schedule, tc.lr, tc.epochs),
        config: tc,
        epoch: 0,
        batch_in_epoch: 0,
        step: 0,
        best_top1: None,
        best_step: None,
        classes,
    };
    let velocity = weights.iter().map(|(k, v)| (k.clone(), v.zeros_like())).collect();
    save(run, &state, &weights, &velocity, 1)
}

/// Loads and validates the checkpoint at (or newest under) `path`.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let dir = find_latest(path)?;
    let sp = dir.join("state.json");
    let text = fs::read_to_string(&sp).map_err(io(&sp))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| bad(&sp, format!("not an alexnet_rs training state: {e}")))?;
    if state.format != FORMAT {
        return Err(bad(&sp, format!("format `{}`, expected `{FORMAT}`", state.format)));
    }
    let cfg = state.config.model_config(state.classes.len() as i64)?;
    let wp = dir.join("weights.safetensors");
    let weights = read_tensors(&wp)?;
    check_tensors(&wp, &cfg, &weights)?;
    let op = dir.join("optimizer.safetensors");
    let velocity = read_tensors(&op)?;
    check_tensors(&op, &cfg, &velocity)?;
    Ok(Checkpoint {
        dir,
        state,
        weights,
        velocity,
    })
}
