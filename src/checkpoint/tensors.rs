//! A checkpoint's safetensors files: written and fsynced, read with the cause of a failure in
//! words, and checked against the network they claim to hold.
use super::bad;
use crate::config::Config;
use crate::error::{io, Error, Result};
use crate::files::fsync;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// Writes and fsyncs a safetensors file; a full disk stays an I/O error (ENOSPC), not a
/// safetensors one.
pub(super) fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    // safetensors stores row-major data: channels_last weights (`--channels-last`) are copied.
    let list: Vec<(&str, Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v.contiguous())).collect();
    Tensor::write_safetensors(&list, path).map_err(|e| write_error(path, e))?;
    fsync(path)
}

/// Replaces the safetensors file `path` by `tensors` through [`crate::files::write_with`]: after a
/// kill or a full disk, `path` is the old file or the new one (statistics, the neighbours' feature
/// cache, the Python side's weights).
pub fn save_tensors<T: std::borrow::Borrow<Tensor>>(path: &Path, tensors: &[(&str, T)]) -> Result<()> {
    let list: Vec<(&str, Tensor)> = tensors.iter().map(|(k, v)| (*k, v.borrow().contiguous())).collect();
    crate::files::write_with(path, |part| {
        Tensor::write_safetensors(&list, part).map_err(|e| write_error(path, e))
    })
}

/// A failed safetensors write of `path`: the OS's error (a full disk), or the cause in words.
fn write_error(path: &Path, e: tch::TchError) -> Error {
    match e {
        tch::TchError::SafeTensorError {
            err: safetensors::SafeTensorError::IoError(source),
            ..
        } => io(path)(source),
        e => bad(path, format!("cannot write: {}", safetensors_cause(&e))),
    }
}

/// Words for what is wrong with a safetensors file (the crate's error names say little).
fn safetensors_cause(e: &tch::TchError) -> String {
    use safetensors::SafeTensorError as E;
    let tch::TchError::SafeTensorError { err, .. } = e else {
        return crate::error::clean_torch_message(&e.to_string());
    };
    match err {
        E::HeaderTooSmall => "too short to hold a safetensors header (empty or truncated file)".into(),
        E::InvalidHeaderLength | E::HeaderTooLarge => {
            "its header length is impossible for this file (not a safetensors file, or truncated)".into()
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization | E::JsonError(_) => {
            "its header is not valid JSON describing tensors (not a safetensors file?)".into()
        }
        E::MetadataIncompleteBuffer => {
            "the file is shorter than its header says (truncated), or has bytes after its data".into()
        }
        E::TensorInvalidInfo | E::InvalidOffset(_) | E::ValidationOverflow | E::InvalidTensorView(..) => {
            format!("its header describes impossible tensor sizes or offsets ({err:?}): damaged file")
        }
        E::TensorNotFound(name) => format!("no tensor `{name}`"),
        E::IoError(io) => io.to_string(),
    }
}

pub(crate) fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(bad(path, "missing"));
    }
    Tensor::read_safetensors(path)
        .map(|v| v.into_iter().collect())
        .map_err(|e| {
            bad(
                path,
                format!(
                    "not a readable safetensors file (truncated or foreign?): {}",
                    safetensors_cause(&e)
                ),
            )
        })
}

/// Checks names, shapes, dtype (float32) and values (finite) against the config's parameters.
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
        if t.kind() != tch::Kind::Float {
            return Err(bad(
                path,
                format!("`{name}` has dtype {:?}; checkpoints hold float32", t.kind()),
            ));
        }
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
    check_finite(path, tensors)
}

/// Refuses NaN and infinite values: a diverged or damaged checkpoint would evaluate to NaN.
fn check_finite(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    for (name, t) in tensors {
        let bad_values = t
            .f_isfinite()?
            .f_logical_not()?
            .f_sum(tch::Kind::Int64)?
            .int64_value(&[]);
        if bad_values > 0 {
            return Err(bad(
                path,
                format!(
                    "`{name}` holds {bad_values} NaN or infinite values of {}: the run diverged or the file is damaged",
                    t.numel()
                ),
            ));
        }
    }
    Ok(())
}
