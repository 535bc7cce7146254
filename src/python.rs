//! The pyo3 module `alexnet_rs._native`: a thin binding over the core modules, no logic of its
//! own. Every core error becomes an instance of the matching class in `alexnet_rs.errors`.
use crate::config::{Config, Preset};
use crate::conv::ConvBackend;
use crate::error::{Error, OpErrorKind};
use crate::{info, model, ops};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use std::collections::{BTreeMap, HashMap};

/// Maps a core error to its Python exception class (alexnet_rs/errors.py).
fn py_err(e: Error) -> PyErr {
    let class = match &e {
        Error::Config(_) | Error::MissingParam(..) => "ConfigError",
        Error::Shape(_)
        | Error::Op {
            kind: OpErrorKind::Value,
            ..
        } => "ShapeError",
        Error::Dtype(_)
        | Error::Op {
            kind: OpErrorKind::Type,
            ..
        } => "DtypeError",
        Error::Op {
            kind: OpErrorKind::Other,
            ..
        }
        | Error::Torch(_) => "TorchError",
        Error::File { .. } => "DataError",
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => "MissingFileError",
        Error::Io { .. } => "AlexNetIOError",
    };
    let message = e.to_string();
    Python::with_gil(|py| {
        match py
            .import("alexnet_rs.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.call1((message.clone(),)))
        {
            Ok(instance) => PyErr::from_value(instance),
            Err(import_failure) => import_failure,
        }
    })
}

fn config(preset: &str, num_classes: i64) -> PyResult<Config> {
    preset
        .parse::<Preset>()
        .and_then(|p| Config::preset(p, num_classes))
        .map_err(py_err)
}

/// LRN through the Rust wrapper of our op (the same kernel `torch.ops.alexnet_rs.lrn` reaches).
#[pyfunction]
#[pyo3(signature = (x, size=5, alpha=1e-4, beta=0.75, k=2.0))]
fn lrn(py: Python<'_>, x: PyTensor, size: i64, alpha: f64, beta: f64, k: f64) -> PyResult<PyTensor> {
    let x = x.0;
    py.allow_threads(move || ops::lrn(&x, size, alpha, beta, k))
        .map(PyTensor)
        .map_err(py_err)
}

/// Rows of `alexnet info`: (name, op, output shape, parameters, MACs).
#[pyfunction]
#[pyo3(signature = (preset, input_size=None, num_classes=1000))]
fn layer_table(
    preset: &str,
    input_size: Option<i64>,
    num_classes: i64,
) -> PyResult<Vec<(String, String, Vec<i64>, i64, i64)>> {
    let cfg = config(preset, num_classes)?;
    let rows = info::layer_table(&cfg, input_size.unwrap_or(cfg.input_size)).map_err(py_err)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.name, r.op, r.out_shape, r.params, r.macs))
        .collect())
}

/// The text `alexnet info` prints.
#[pyfunction]
#[pyo3(signature = (preset, input_size=None, num_classes=1000))]
fn info_text(preset: &str, input_size: Option<i64>, num_classes: i64) -> PyResult<String> {
    let cfg = config(preset, num_classes)?;
    info::render(&cfg, input_size.unwrap_or(cfg.input_size)).map_err(py_err)
}

/// Every parameter's (name, shape), in network order.
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000))]
fn param_shapes(preset: &str, num_classes: i64) -> PyResult<Vec<(String, Vec<i64>)>> {
    Ok(config(preset, num_classes)?.param_shapes())
}

/// The Rust functional forward over a dict of named parameters (autograd-connected: gradients
/// land on the tensors passed in).
#[pyfunction]
#[pyo3(signature = (preset, params, x, train=false, num_classes=1000, conv_backend="auto"))]
fn forward(
    py: Python<'_>,
    preset: &str,
    params: HashMap<String, PyTensor>,
    x: PyTensor,
    train: bool,
    num_classes: i64,
    conv_backend: &str,
) -> PyResult<PyTensor> {
    let mut cfg = config(preset, num_classes)?;
    cfg.conv_backend = conv_backend.parse::<ConvBackend>().map_err(py_err)?;
    let params = model::Params::new(params.into_iter().map(|(k, v)| (k, v.0)).collect::<BTreeMap<_, _>>());
    let x = x.0;
    py.allow_threads(move || model::forward(&cfg, &params, &x, train))
        .map(PyTensor)
        .map_err(py_err)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PRESETS", Preset::ALL.map(Preset::name).to_vec())?;
    m.add_function(wrap_pyfunction!(lrn, m)?)?;
    m.add_function(wrap_pyfunction!(layer_table, m)?)?;
    m.add_function(wrap_pyfunction!(info_text, m)?)?;
    m.add_function(wrap_pyfunction!(param_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(forward, m)?)?;
    Ok(())
}
