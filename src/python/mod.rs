//! The pyo3 module `alexnet_rs._native`: a thin binding over the core, one file per core area,
//! no logic of its own. Every entry point runs under a panic boundary, checks its arguments by
//! name, and turns core errors into the matching class of `alexnet_rs.errors` (`boundary.rs`).
//! - `model.rs`: config, info, model, ops, placement;
//! - `train.rs`: settings, train, checkpoint;
//! - `data.rs`: the data pipeline;
//! - `cli.rs`: the `alexnet` command itself (the wheel's console script).
mod boundary;
mod cli;
mod data;
mod model;
mod train;

use crate::config::{Config, Preset};
use boundary::core;
use pyo3::prelude::*;

fn config(preset: &str, num_classes: i64) -> PyResult<Config> {
    core(preset.parse::<Preset>().and_then(|p| Config::preset(p, num_classes)))
}

/// Replaces the file `path` by `data` crash-safely (`files::write`): the writes of the Python side
/// (an ONNX model, compare's reports, the ddp example's outputs) go the Rust side's one way.
#[pyfunction]
fn write_file(py: Python<'_>, path: std::path::PathBuf, data: &[u8]) -> PyResult<()> {
    boundary::guard(|| core(py.allow_threads(|| crate::files::write(&path, data))))
}

/// Replaces the safetensors file `path` by the named tensors of `tensors` crash-safely
/// (`checkpoint::save_tensors`): safetensors without the Python package.
#[pyfunction]
fn save_tensors(py: Python<'_>, path: std::path::PathBuf, tensors: &Bound<'_, pyo3::types::PyDict>) -> PyResult<()> {
    boundary::guard(|| {
        let named = boundary::tensors(tensors, "tensor")?;
        core(py.allow_threads(move || {
            let list: Vec<(&str, &tch::Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
            crate::checkpoint::save_tensors(&path, &list)
        }))
    })
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PRESETS", Preset::ALL.map(Preset::name).to_vec())?;
    m.add_function(wrap_pyfunction!(model::lrn, m)?)?;
    m.add_function(wrap_pyfunction!(model::cpu_cache_enter, m)?)?;
    m.add_function(wrap_pyfunction!(model::cpu_cache_exit, m)?)?;
    m.add_function(wrap_pyfunction!(model::cpu_cache_stats, m)?)?;
    m.add_function(wrap_pyfunction!(model::layer_table, m)?)?;
    m.add_function(wrap_pyfunction!(model::info_text, m)?)?;
    m.add_function(wrap_pyfunction!(model::param_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(model::layers, m)?)?;
    m.add_function(wrap_pyfunction!(model::forward, m)?)?;
    m.add_function(wrap_pyfunction!(model::activations, m)?)?;
    m.add_function(wrap_pyfunction!(model::filter_grid, m)?)?;
    m.add_function(wrap_pyfunction!(model::shard, m)?)?;
    m.add_function(wrap_pyfunction!(model::placement_table, m)?)?;
    m.add_function(wrap_pyfunction!(model::init_params, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_function(wrap_pyfunction!(train::train_config, m)?)?;
    m.add_function(wrap_pyfunction!(train::train_settings, m)?)?;
    m.add_function(wrap_pyfunction!(train::train_events, m)?)?;
    m.add_function(wrap_pyfunction!(train::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(train::save_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(train::load_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(data::load_image, m)?)?;
    m.add_function(wrap_pyfunction!(data::transform_views, m)?)?;
    m.add_function(wrap_pyfunction!(cli::cli, m)?)?;
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add_function(wrap_pyfunction!(save_tensors, m)?)?;
    m.add_class::<data::DataLoader>()?;
    m.add_class::<data::EpochIter>()?;
    Ok(())
}
