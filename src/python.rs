//! The pyo3 module `alexnet_rs._native`: a thin binding over the core modules, no logic of its
//! own. Every entry point runs under a panic boundary, checks its arguments by name, and turns
//! core errors into the matching class of `alexnet_rs.errors` (see `boundary`); the data
//! pipeline's bindings are in `data`.
mod boundary;
mod data;

use crate::config::{Config, Preset};
use crate::conv::ConvBackend;
use crate::error::Error;
use crate::{info, model, ops};
use boundary::{core, count, guard, py_err, side, tensor, tensors};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use std::path::PathBuf;

fn config(preset: &str, num_classes: i64) -> PyResult<Config> {
    core(preset.parse::<Preset>().and_then(|p| Config::preset(p, num_classes)))
}

/// The preset's network for square inputs of `input_size` (default: the preset's own).
fn config_at(preset: &str, num_classes: i64, input_size: Option<i64>) -> PyResult<Config> {
    let mut cfg = config(preset, num_classes)?;
    if let Some(s) = input_size {
        core(cfg.spatial_sizes(s))?;
        cfg.input_size = s;
    }
    Ok(cfg)
}

/// LRN through the Rust wrapper of our op (the same kernel `torch.ops.alexnet_rs.lrn` reaches).
#[pyfunction]
#[pyo3(signature = (x, size=5, alpha=1e-4, beta=0.75, k=2.0))]
fn lrn(py: Python<'_>, x: &Bound<'_, PyAny>, size: i64, alpha: f64, beta: f64, k: f64) -> PyResult<PyTensor> {
    guard(|| {
        let x = tensor(x, "x")?;
        core(py.allow_threads(move || ops::lrn(&x, size, alpha, beta, k))).map(PyTensor)
    })
}

/// Rows of `alexnet info`: (name, op, output shape, parameters, MACs).
#[pyfunction]
#[pyo3(signature = (preset, input_size=None, num_classes=1000))]
fn layer_table(
    preset: &str,
    input_size: Option<i64>,
    num_classes: i64,
) -> PyResult<Vec<(String, String, Vec<i64>, i64, i64)>> {
    guard(|| {
        let cfg = config(preset, num_classes)?;
        let rows = core(info::layer_table(&cfg, input_size.unwrap_or(cfg.input_size)))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.name, r.op, r.out_shape, r.params, r.macs))
            .collect())
    })
}

/// The text `alexnet info` prints.
#[pyfunction]
#[pyo3(signature = (preset, input_size=None, num_classes=1000))]
fn info_text(preset: &str, input_size: Option<i64>, num_classes: i64) -> PyResult<String> {
    guard(|| {
        let cfg = config(preset, num_classes)?;
        core(info::render(&cfg, input_size.unwrap_or(cfg.input_size)))
    })
}

/// The preset's network as data (JSON of `Config`: conv and FC layers, LRN, pooling), for
/// code that rebuilds the graph elsewhere (the ONNX export).
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000))]
fn architecture(preset: &str, num_classes: i64) -> PyResult<String> {
    guard(|| Ok(serde_json::to_string(&config(preset, num_classes)?).expect("plain data")))
}

/// Every parameter's (name, shape), in network order.
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000))]
fn param_shapes(preset: &str, num_classes: i64) -> PyResult<Vec<(String, Vec<i64>)>> {
    guard(|| Ok(config(preset, num_classes)?.param_shapes()))
}

/// The Rust functional forward over a dict of named parameters (autograd-connected: gradients
/// land on the tensors passed in), for square inputs of `input_size` (default: the preset's).
#[pyfunction]
#[pyo3(signature = (preset, params, x, train=false, num_classes=1000, conv_backend="auto", input_size=None))]
#[allow(clippy::too_many_arguments)]
fn forward(
    py: Python<'_>,
    preset: &str,
    params: &Bound<'_, PyDict>,
    x: &Bound<'_, PyAny>,
    train: bool,
    num_classes: i64,
    conv_backend: &str,
    input_size: Option<i64>,
) -> PyResult<PyTensor> {
    guard(|| {
        let mut cfg = config_at(preset, num_classes, input_size)?;
        cfg.conv_backend = core(conv_backend.parse::<ConvBackend>())?;
        let params = model::Params::new(tensors(params, "parameter")?);
        let x = tensor(x, "x")?;
        core(py.allow_threads(move || model::forward(&cfg, &params, &x, train))).map(PyTensor)
    })
}

/// The table `alexnet placement` prints: which rows of each parameter live on which device.
#[pyfunction]
#[pyo3(signature = (preset, devices, num_classes=1000))]
fn placement_table(preset: &str, devices: &str, num_classes: i64) -> PyResult<String> {
    guard(|| {
        let cfg = config(preset, num_classes)?;
        core(crate::placement::Placement::parse(devices).and_then(|p| p.table(&cfg)))
    })
}

/// A train config dict as a `TrainConfig`, naming the key at fault (serde names unknown keys
/// but not the key of a value of the wrong type).
fn train_config(py: Python<'_>, config: &Bound<'_, PyDict>) -> PyResult<crate::train::TrainConfig> {
    let bad = |m: String| py_err(Error::Config(m));
    let json: String = py
        .import("json")?
        .call_method1("dumps", (config,))
        .and_then(|j| j.extract())
        .map_err(|e| bad(format!("train config: not plain data (str, numbers, bools, None): {e}")))?;
    serde_json::from_str(&json).map_err(|e| {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
        let key = map.into_iter().find(|(k, v)| {
            let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
            serde_json::from_value::<crate::train::TrainConfig>(one).is_err()
        });
        match key {
            Some((k, _)) => bad(format!("train config `{k}`: {e}")),
            None => bad(format!("train config: {e}")),
        }
    })
}

/// Runs the Rust training loop with the GIL released. `config` is a dict of TrainConfig fields
/// (see `alexnet train --help`); `on_step(dict)` receives every step's and epoch's metrics.
/// Ctrl-C (KeyboardInterrupt) stops cleanly after a checkpoint, then is re-raised.
#[pyfunction]
#[pyo3(signature = (config, on_step=None, resume=None))]
fn train(
    py: Python<'_>,
    config: &Bound<'_, PyDict>,
    on_step: Option<PyObject>,
    resume: Option<PathBuf>,
) -> PyResult<PyObject> {
    guard(|| {
        let tc = train_config(py, config)?;
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
        let result = py.allow_threads(|| {
            let mut on_event = |e: &crate::train::Event| {
                if let Some(cb) = &on_step {
                    send_event(cb, e, &callback_error);
                }
            };
            let stop = || {
                let sig = Python::with_gil(|py| py.check_signals().is_err());
                if sig {
                    interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                sig || callback_error.lock().expect("lock").is_some()
            };
            crate::train::train(&tc, resume.as_deref(), &mut on_event, &stop)
        });
        let callback_error = callback_error.into_inner().expect("lock");
        // Ctrl-C may land inside the callback (then it is the callback's error) or in Rust.
        let ctrl_c = callback_error
            .as_ref()
            .is_some_and(|e| e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py));
        if let Some(err) = callback_error.filter(|_| !ctrl_c) {
            return Err(err);
        }
        if ctrl_c || interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(pyo3::exceptions::PyKeyboardInterrupt::new_err(
                "training stopped after a checkpoint",
            ));
        }
        eval_dict(py, &core(result)?)
    })
}

/// Calls `on_step(dict)` with one event; its first error is kept (and stops the run).
fn send_event(cb: &PyObject, e: &crate::train::Event, error: &std::sync::Mutex<Option<PyErr>>) {
    let value = match e {
        crate::train::Event::Step(r) => serde_json::to_string(r),
        crate::train::Event::Epoch(r) => serde_json::to_string(r),
        crate::train::Event::Checkpoint(d) => serde_json::to_string(&serde_json::json!({"checkpoint": d})),
    }
    .expect("plain records");
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

/// Freshly initialised whole parameters of a preset (CPU, float32) for square inputs of
/// `input_size` (default: the preset's), drawn from torch's global generator (seed it with
/// torch.manual_seed): the Rust initialisation, the same as the CLI's.
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000, input_size=None))]
fn init_params(preset: &str, num_classes: i64, input_size: Option<i64>) -> PyResult<Vec<(String, PyTensor)>> {
    guard(|| {
        let cfg = config_at(preset, num_classes, input_size)?;
        let mut whole = core(model::init_whole(&cfg))?;
        // Network order (weight, bias, layer by layer), as torchvision's state_dict.
        Ok(cfg
            .param_shapes()
            .into_iter()
            .filter_map(|(k, _)| whole.remove(&k).map(|v| (k, PyTensor(v))))
            .collect())
    })
}

/// Top-1/top-5 accuracy of a checkpoint (run folder or ckpt folder) on its run's test split
/// (or `data`'s), centre crop or the average over 10 crops.
#[pyfunction]
#[pyo3(signature = (checkpoint, data=None, ten_crop=false, limit=None, batch_size=128, devices="cpu"))]
fn evaluate(
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
        let limit = limit.map(|n| count("limit", n, 0)).transpose()?;
        core(crate::placement::Placement::parse(devices))?;
        let devices = devices.to_string();
        let r = py.allow_threads(move || {
            crate::train::evaluate_checkpoint(&checkpoint, data, ten_crop, limit, batch_size, &devices)
        });
        eval_dict(py, &core(r)?)
    })
}

fn eval_dict(py: Python<'_>, r: &crate::train::EvalResult) -> PyResult<PyObject> {
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
fn save_checkpoint(
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
        core(crate::checkpoint::save_weights(&out, p, size, &weights, classes))
    })
}

/// Loads and validates a checkpoint (a run folder: its newest; or a ckpt folder): (preset,
/// class names, whole weights in network order, the network's settings: input_size and the
/// ablation switches of `alexnet train`).
#[pyfunction]
fn load_checkpoint(
    py: Python<'_>,
    path: PathBuf,
) -> PyResult<(String, Vec<String>, Vec<(String, PyTensor)>, PyObject)> {
    guard(|| {
        let mut c = core(crate::checkpoint::load(&path))?;
        let tc = &c.state.config;
        let cfg = core(tc.model_config(c.state.classes.len() as i64))?;
        let settings = PyDict::new(py);
        settings.set_item("input_size", tc.input_size)?;
        settings.set_item("activation", tc.activation.name())?;
        settings.set_item("lrn", tc.lrn)?;
        settings.set_item("pool_kernel", tc.pool_kernel)?;
        settings.set_item("dropout", tc.dropout)?;
        let weights = cfg
            .param_shapes()
            .into_iter()
            .filter_map(|(k, _)| c.weights.remove(&k).map(|v| (k, PyTensor(v))))
            .collect();
        let (preset, classes) = (c.state.config.preset.clone(), c.state.classes.clone());
        Ok((preset, classes, weights, settings.into_any().unbind()))
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PRESETS", Preset::ALL.map(Preset::name).to_vec())?;
    m.add_function(wrap_pyfunction!(lrn, m)?)?;
    m.add_function(wrap_pyfunction!(layer_table, m)?)?;
    m.add_function(wrap_pyfunction!(info_text, m)?)?;
    m.add_function(wrap_pyfunction!(param_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(architecture, m)?)?;
    m.add_function(wrap_pyfunction!(forward, m)?)?;
    m.add_function(wrap_pyfunction!(data::load_image, m)?)?;
    m.add_function(wrap_pyfunction!(placement_table, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(init_params, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(save_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(load_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(data::transform_views, m)?)?;
    m.add_class::<data::DataLoader>()?;
    m.add_class::<data::EpochIter>()?;
    Ok(())
}
