//! The edge between Python and the Rust core: core errors become instances of the classes in
//! `alexnet_rs.errors`, a panic becomes an `AlexNetError` (never pyo3's `PanicException`, which
//! `except Exception` does not catch), and arguments are checked by name before they reach the
//! core: tensors by type and by device *name* (tch reports the meta device as MPS), sizes as
//! Python ints with their allowed range.
use crate::error::{Error, OpErrorKind};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

/// Maps a core error to its Python exception class (alexnet_rs/errors.py).
pub fn py_err(e: Error) -> PyErr {
    // An exception a Python hook raised inside the native call (a saved-tensors hook; the early
    // stop of torch.utils.checkpoint's recomputation) is still pending: it is the real error, and
    // calling into Python over it made a SystemError.
    if let Some(pending) = Python::with_gil(PyErr::take) {
        return pending;
    }
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
        | Error::Torch(_)
        | Error::Internal(_) => "TorchError",
        Error::File { .. } | Error::SomeFailed(_) => "DataError",
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => "MissingFileError",
        Error::Io { .. } => "AlexNetIOError",
        Error::Diverged { .. } => "DivergedError",
        Error::Interrupted(_) => return pyo3::exceptions::PyKeyboardInterrupt::new_err("interrupted"),
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

/// Runs the body of a Python entry point: a panic inside becomes a `TorchError` naming it as an
/// internal error, with any C++ frames stripped.
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    crate::error::catch_panic(f).unwrap_or_else(|message| Err(py_err(Error::Internal(message))))
}

/// A core `Result` as a Python one.
pub fn core<T>(r: crate::Result<T>) -> PyResult<T> {
    r.map_err(py_err)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
}

/// `obj` as a tensor on a device we compute on (`cpu` or `cuda`, read from `tensor.device.type`).
pub fn tensor(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<tch::Tensor> {
    let t: PyTensor = obj.extract().map_err(|_| {
        py_err(Error::Dtype(format!(
            "{what} must be a torch.Tensor, got {}",
            type_name(obj)
        )))
    })?;
    let device: String = obj.getattr("device")?.getattr("type")?.extract()?;
    match device.as_str() {
        "cpu" | "cuda" => Ok(t.0),
        other => Err(py_err(Error::Shape(format!(
            "{what} is on the {other} device: alexnet_rs computes on cpu or cuda (move it with .to(\"cpu\"))"
        )))),
    }
}

/// A dict of named tensors (parameters), each checked as [`tensor`].
pub fn tensors(
    dict: &Bound<'_, pyo3::types::PyDict>,
    what: &str,
) -> PyResult<std::collections::BTreeMap<String, tch::Tensor>> {
    dict.iter()
        .map(|(k, v)| {
            let name: String = k
                .extract()
                .map_err(|_| py_err(Error::Dtype(format!("{what} keys must be str, got {}", type_name(&k)))))?;
            let t = tensor(&v, &format!("{what} `{name}`"))?;
            Ok((name, t))
        })
        .collect()
}

/// A dict of named parameters whose values are tensors or lists of tensors (a parameter's shards
/// along dim 0, one per device of a two-device placement), each checked as [`tensor`].
pub fn shard_lists(
    dict: &Bound<'_, pyo3::types::PyDict>,
    what: &str,
) -> PyResult<std::collections::BTreeMap<String, Vec<tch::Tensor>>> {
    dict.iter()
        .map(|(k, v)| {
            let name: String = k
                .extract()
                .map_err(|_| py_err(Error::Dtype(format!("{what} keys must be str, got {}", type_name(&k)))))?;
            let label = format!("{what} `{name}`");
            let shards = match v.downcast::<pyo3::types::PyList>() {
                Ok(list) => list.iter().map(|t| tensor(&t, &label)).collect::<PyResult<Vec<_>>>()?,
                Err(_) => vec![tensor(&v, &label)?],
            };
            if shards.is_empty() {
                return Err(py_err(Error::Shape(format!("{label} has no shards"))));
            }
            Ok((name, shards))
        })
        .collect()
}

/// A Python int argument that must be at least `min`.
pub fn at_least(name: &str, value: i64, min: i64) -> PyResult<i64> {
    if value < min {
        return Err(py_err(Error::Config(format!("{name} must be >= {min}, got {value}"))));
    }
    Ok(value)
}

/// A size or count argument (`>= min`) as a `usize`.
pub fn count(name: &str, value: i64, min: i64) -> PyResult<usize> {
    at_least(name, value, min).map(|v| v as usize)
}

/// A seed or index argument (`>= 0`) as a `u64`.
pub fn index(name: &str, value: i64) -> PyResult<u64> {
    at_least(name, value, 0).map(|v| v as u64)
}

/// A pixel size argument (`>= 1`, fits u32).
pub fn side(name: &str, value: i64) -> PyResult<u32> {
    let v = at_least(name, value, 1)?;
    u32::try_from(v).map_err(|_| py_err(Error::Config(format!("{name} is too large: {v}"))))
}
