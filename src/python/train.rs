//! Bindings of training (`crate::train`, `settings`, `checkpoint`): the Rust training loop with
//! Python callbacks, evaluation, checkpoints both ways, and the settings' description.
use super::boundary::{core, count, guard, py_err, side, tensors};
use crate::config::{Config, Preset};
use crate::error::Error;
use crate::settings::{self, TrainConfig};
use crate::train::{EvalResult, Event};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt};
use pyo3_tch::PyTensor;
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;

/// A dict of training settings as a `TrainConfig` (each value through JSON, so Python's types map
/// to serde's; an unknown key or a bad value is a ConfigError naming the key).
fn settings_from(py: Python<'_>, config: &Bound<'_, PyDict>) -> PyResult<TrainConfig> {
    // Paths may be PathLike, numbers NumPy scalars (alexnet_rs._boundary.json_default makes them
    // str, int, float). JSON has no NaN or infinity.
    let kwargs = PyDict::new(py);
    kwargs.set_item("default", py.import("alexnet_rs._boundary")?.getattr("json_default")?)?;
    kwargs.set_item("allow_nan", false)?;
    let dumps = py.import("json")?.getattr("dumps")?;
    let mut map = serde_json::Map::new();
    for (k, v) in config.iter() {
        let key: String = k.extract().map_err(|_| {
            py_err(Error::Config(format!(
                "train settings: keys are setting names (str), got {k}"
            )))
        })?;
        if let Some(f) = v.downcast::<PyFloat>().ok().filter(|f| !f.value().is_finite()) {
            return Err(py_err(Error::Config(format!(
                "train setting `{key}`: expected a finite number, got {f}"
            ))));
        }
        // JSON would carry it as a float ("invalid type: floating point 1.18e21").
        let whole = v.is_instance_of::<PyInt>() && !v.is_instance_of::<PyBool>();
        if whole
            && !v
                .extract::<i128>()
                .is_ok_and(|n| (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&n))
        {
            return Err(py_err(Error::Config(format!(
                "train setting `{key}`: {v} is out of range for any setting (at most 64 bits)"
            ))));
        }
        let value = dumps
            .call((v,), Some(&kwargs))
            .and_then(|j| j.extract::<String>())
            .map_err(|e| e.to_string())
            .and_then(|j| serde_json::from_str(&j).map_err(|e| e.to_string()))
            .map_err(|e| {
                py_err(Error::Config(format!(
                    "train setting `{key}`: not plain data (str, finite numbers, bools, paths, None, lists): {e}"
                )))
            })?;
        map.insert(key, value);
    }
    core(TrainConfig::from_map(map))
}

/// `config` completed with the defaults and checked, as `train` would use it (a dict).
#[pyfunction]
pub fn train_config(py: Python<'_>, config: &Bound<'_, PyDict>) -> PyResult<PyObject> {
    guard(|| {
        let tc = settings_from(py, config)?;
        core(tc.validate())?;
        json_to_py(
            py,
            &serde_json::to_string(&tc).map_err(|e| py_err(Error::Internal(e.to_string())))?,
        )
    })
}

/// Every training setting: (key, flag, kind, choices, default, help), as `alexnet train --help`
/// lists them.
#[pyfunction]
pub fn train_settings(py: Python<'_>) -> PyResult<PyObject> {
    guard(|| {
        json_to_py(
            py,
            &serde_json::to_string(&settings::describe()).map_err(|e| py_err(Error::Internal(e.to_string())))?,
        )
    })
}

/// One event of each kind `train`'s `on_step` receives (step, epoch, checkpoint), with zero
/// values: their keys and value types (the `StepEvent`... stubs are generated from them).
#[pyfunction]
pub fn train_events(py: Python<'_>) -> PyResult<PyObject> {
    guard(|| {
        let events = [
            Event::Step(Default::default()),
            Event::Epoch(Default::default()),
            Event::Checkpoint(PathBuf::new()),
        ];
        let json: Vec<serde_json::Value> = events.iter().filter_map(event_json).collect();
        json_to_py(py, &serde_json::Value::Array(json).to_string())
    })
}

/// An event as `on_step` receives it (the start of training is not sent).
fn event_json(e: &Event) -> Option<serde_json::Value> {
    match e {
        Event::Start { .. } | Event::Evaluating { .. } | Event::Stopped => None,
        Event::Step(r) => serde_json::to_value(r).ok(),
        Event::Epoch(r) => serde_json::to_value(r).ok(),
        Event::Checkpoint(d) => Some(serde_json::json!({ "checkpoint": d })),
    }
}

fn json_to_py(py: Python<'_>, json: &str) -> PyResult<PyObject> {
    Ok(py.import("json")?.call_method1("loads", (json,))?.unbind())
}

/// Runs the Rust training loop with the GIL released. `config` is a dict of TrainConfig fields
/// (see `alexnet train --help`); `on_step(dict)` receives every step's and epoch's metrics
/// and `{"checkpoint": path}` after each checkpoint.
/// Ctrl-C (KeyboardInterrupt) stops cleanly after the next step's checkpoint, then is re-raised;
/// one during an evaluation ends it and saves the position before it (a resume redoes the
/// evaluation). `resume`: a
/// run folder to continue; of `config` it takes `epochs`, `keep`, `out`, `devices`, `threads`,
/// `data`, `stats`, `max_steps` and `time_budget_s` and warns (`UserWarning`) about any other key whose value differs from the run's.
/// A new run into an `out` that holds checkpoints raises `ConfigError` (one run per folder).
#[pyfunction]
#[pyo3(signature = (config, on_step=None, resume=None))]
pub fn train(
    py: Python<'_>,
    config: &Bound<'_, PyDict>,
    on_step: Option<PyObject>,
    resume: Option<PathBuf>,
) -> PyResult<PyObject> {
    guard(|| {
        let tc = settings_from(py, config)?;
        if let Some(cb) = on_step.as_ref().filter(|cb| !cb.bind(py).is_callable()) {
            let got = cb
                .bind(py)
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string());
            return Err(py_err(Error::Dtype(format!("on_step must be callable, got {got}"))));
        }
        let interrupted = std::sync::atomic::AtomicBool::new(false);
        let callback_error: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
        let (result, left) = py.allow_threads(|| {
            crate::say::capture_warnings(|| {
                let mut on_event = |e: &Event| {
                    if matches!(e, Event::Start { .. }) {
                        // The start-up's warnings (--resume ignoring a setting) before any step.
                        Python::with_gil(|py| warn(py, crate::say::take_warnings(), &callback_error));
                    }
                    if let Some(cb) = &on_step {
                        send_event(cb, e, &callback_error);
                    }
                };
                let stop = || {
                    let sig = Python::with_gil(|py| {
                        warn(py, crate::say::take_warnings(), &callback_error);
                        py.check_signals().is_err()
                    });
                    if sig {
                        interrupted.store(true, SeqCst);
                    }
                    interrupted.load(SeqCst) || callback_error.lock().expect("lock").is_some()
                };
                crate::train::train_until_stopped(&tc, resume.as_deref(), &mut on_event, &stop)
            })
        });
        warn(py, left, &callback_error);
        let callback_error = callback_error.into_inner().expect("lock");
        // Ctrl-C may land inside the callback (then it is the callback's error) or in Rust.
        let ctrl_c = callback_error
            .as_ref()
            .is_some_and(|e| e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py));
        if let Some(err) = callback_error.filter(|_| !ctrl_c) {
            // Not one of train's own argument errors (python/alexnet_rs/_boundary.py), though a
            // builtin callback's leaves no traceback frame of its own either.
            let _ = err.value(py).setattr(pyo3::intern!(py, "_alexnet_rs_callback"), true);
            return Err(err);
        }
        if ctrl_c || interrupted.load(SeqCst) {
            return Err(pyo3::exceptions::PyKeyboardInterrupt::new_err(
                "training stopped after a checkpoint",
            ));
        }
        eval_dict(py, &core(result)?)
    })
}

/// Raises the run's warnings as Python `UserWarning`s, at the caller's line; an error (a
/// warnings filter set to "error") is kept as a callback's is, and stops the run.
fn warn(py: Python<'_>, warnings: Vec<String>, error: &std::sync::Mutex<Option<PyErr>>) {
    for w in warnings {
        let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
        // stacklevel 2: past the `checked` wrapper, the caller of alexnet_rs.train.
        if let Err(err) = py
            .import("warnings")
            .and_then(|m| m.call_method1("warn", (w, category, 2)))
        {
            error.lock().expect("lock").get_or_insert(err);
        }
    }
}

/// Calls `on_step(dict)` with one event; its first error is kept (and stops the run). Once the
/// callback (or a warnings filter) has raised, it is not called again.
fn send_event(cb: &PyObject, e: &Event, error: &std::sync::Mutex<Option<PyErr>>) {
    let Some(value) = event_json(e).map(|v| v.to_string()) else {
        return;
    };
    if error.lock().expect("lock").is_some() {
        return;
    }
    Python::with_gil(|py| {
        let r = py
            .import("json")
            .and_then(|j| j.call_method1("loads", (value,)))
            .and_then(|d| cb.call1(py, (d,)));
        if let Err(err) = r {
            error.lock().expect("lock").get_or_insert(err);
        }
    });
}

/// Top-1/top-5 accuracy of a checkpoint (run folder or ckpt folder) on its run's test split
/// (or `data`'s), centre crop or the average over 10 crops. Ctrl-C stops it (KeyboardInterrupt)
/// before the next batch.
#[pyfunction]
#[pyo3(signature = (checkpoint, data=None, ten_crop=false, limit=None, batch_size=128, devices="cpu"))]
pub fn evaluate(
    py: Python<'_>,
    checkpoint: PathBuf,
    data: Option<PathBuf>,
    ten_crop: bool,
    limit: Option<i64>,
    batch_size: i64,
    devices: &str,
) -> PyResult<PyObject> {
    guard(|| {
        let batch_size = count("batch_size", batch_size, 1)?;
        let limit = limit.map(|n| count("limit", n, 1)).transpose()?;
        core(crate::placement::Placement::parse(devices))?;
        let devices = devices.to_string();
        let stop = || Python::with_gil(|py| py.check_signals().is_err());
        let r = py.allow_threads(move || {
            crate::train::evaluate_checkpoint(&checkpoint, data, ten_crop, limit, batch_size, &devices, &|_, _| stop())
        });
        eval_dict(py, &core(r)?)
    })
}

fn eval_dict(py: Python<'_>, r: &EvalResult) -> PyResult<PyObject> {
    let d = PyDict::new(py);
    d.set_item("top1", r.top1)?;
    d.set_item("top5", r.top5)?;
    d.set_item("loss", r.loss)?;
    d.set_item("samples", r.samples)?;
    Ok(d.into_any().unbind())
}

/// Writes whole weights as a checkpoint folder under `out` (see `checkpoint::save_weights`).
#[pyfunction]
#[pyo3(signature = (preset, params, out, classes=None, input_size=None))]
pub fn save_checkpoint(
    py: Python<'_>,
    preset: &str,
    params: &Bound<'_, PyDict>,
    out: PathBuf,
    classes: Option<Vec<String>>,
    input_size: Option<i64>,
) -> PyResult<PathBuf> {
    guard(|| {
        let p = core(preset.parse::<Preset>())?;
        let size = match input_size {
            Some(s) => side("input_size", s)?,
            None => core(Config::preset(p, 1))?.input_size as u32,
        };
        let weights = tensors(params, "parameter")?;
        core(py.allow_threads(move || crate::checkpoint::save_weights(&out, p, size, &weights, classes)))
    })
}

/// A loaded checkpoint for Python: (preset, class names, weights, settings).
type Loaded = (String, Vec<String>, Vec<(String, PyTensor)>, PyObject);

/// Loads and validates a checkpoint (a run folder: its newest; or a ckpt folder): (preset,
/// class names, whole weights in network order, the network's settings: `input_size`, and
/// `changed`: the ablation switches of `alexnet train` whose values make the network differ from
/// the preset's, with their values).
#[pyfunction]
pub fn load_checkpoint(py: Python<'_>, path: PathBuf) -> PyResult<Loaded> {
    guard(|| {
        // Its warnings (an older network revision) as Python's: a notebook shows no stderr.
        // Without the GIL (other Python threads run meanwhile), on this same thread.
        let (loaded, warnings) =
            py.allow_threads(|| crate::say::capture_warnings(|| crate::checkpoint::load_weights(&path)));
        let raised = std::sync::Mutex::new(None);
        warn(py, warnings, &raised);
        if let Some(e) = raised.into_inner().expect("lock") {
            return Err(e);
        }
        let mut c = core(loaded)?;
        let tc = &c.state.config;
        let cfg = core(tc.model_config(c.state.classes.len() as i64))?;
        let settings = PyDict::new(py);
        settings.set_item("input_size", tc.input_size)?;
        let changed: serde_json::Map<String, serde_json::Value> = core(tc.ablations(c.state.classes.len() as i64))?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        settings.set_item(
            "changed",
            json_to_py(py, &serde_json::Value::Object(changed).to_string())?,
        )?;
        let weights = cfg
            .param_shapes()
            .into_iter()
            .filter_map(|(k, _)| c.weights.remove(&k).map(|v| (k, PyTensor(v))))
            .collect();
        let (preset, classes) = (c.state.config.preset.name().to_string(), c.state.classes.clone());
        Ok((preset, classes, weights, settings.into_any().unbind()))
    })
}
