//! Bindings of the network (`crate::config`, `info`, `model`, `ops`, `placement`): layer tables,
//! parameters, the functional forward and our LRN op.
use super::boundary::{core, guard, shard_lists, tensor, tensors};
use super::{config, config_at};
use crate::conv::ConvBackend;
use crate::{info, model, ops};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

/// LRN through the Rust wrapper of our op (the same kernel `torch.ops.alexnet_rs.lrn` reaches).
#[pyfunction]
#[pyo3(signature = (x, size=5, alpha=1e-4, beta=0.75, k=2.0))]
pub fn lrn(py: Python<'_>, x: &Bound<'_, PyAny>, size: i64, alpha: f64, beta: f64, k: f64) -> PyResult<PyTensor> {
    guard(|| {
        let x = tensor(x, "x")?;
        core(py.allow_threads(move || ops::lrn(&x, size, alpha, beta, k))).map(PyTensor)
    })
}

/// A row of `alexnet info`: (name, op, output shape, parameters, MACs).
type LayerRow = (String, String, Vec<i64>, i64, i64);

/// Rows of `alexnet info`: (name, op, output shape, parameters, MACs).
#[pyfunction]
#[pyo3(signature = (preset, input_size=None, num_classes=1000))]
pub fn layer_table(preset: &str, input_size: Option<i64>, num_classes: i64) -> PyResult<Vec<LayerRow>> {
    guard(|| {
        let cfg = config(preset, num_classes)?;
        let rows = core(info::layer_table(&cfg, input_size.unwrap_or(cfg.input_size)))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.name, r.op.to_string(), r.out_shape, r.params, r.macs))
            .collect())
    })
}

/// The text `alexnet info` prints.
#[pyfunction]
#[pyo3(signature = (preset, input_size=None, num_classes=1000))]
pub fn info_text(preset: &str, input_size: Option<i64>, num_classes: i64) -> PyResult<String> {
    guard(|| {
        let cfg = config(preset, num_classes)?;
        core(info::render(&cfg, input_size.unwrap_or(cfg.input_size)))
    })
}

/// The network's layer list for square inputs of `input_size` (default: the preset's), as JSON:
/// `alexnet info`'s rows with each stage's parameters (`op.kind`: conv, lrn, max_pool,
/// adaptive_avg_pool, fc), for code that rebuilds the graph elsewhere (the ONNX writer).
#[pyfunction]
#[pyo3(signature = (preset, input_size=None, num_classes=1000))]
pub fn layers(preset: &str, input_size: Option<i64>, num_classes: i64) -> PyResult<String> {
    guard(|| {
        let cfg = config_at(preset, num_classes, input_size)?;
        let rows = core(info::layer_table(&cfg, cfg.input_size))?;
        core(serde_json::to_string(&rows).map_err(|e| crate::Error::Internal(e.to_string())))
    })
}

/// Every parameter's (name, shape), in network order.
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000))]
pub fn param_shapes(preset: &str, num_classes: i64) -> PyResult<Vec<(String, Vec<i64>)>> {
    guard(|| Ok(config(preset, num_classes)?.param_shapes()))
}

/// The Rust functional forward over a dict of named parameters (autograd-connected: gradients
/// land on the tensors passed in), for square inputs of `input_size` (default: the side of `x`
/// when it is a square batch, else the preset's).
#[pyfunction]
#[pyo3(signature = (preset, params, x, train=false, num_classes=1000, conv_backend="auto", input_size=None))]
#[allow(clippy::too_many_arguments)]
pub fn forward(
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
        let (cfg, params, x) = forward_args(preset, params, x, num_classes, conv_backend, input_size)?;
        core(py.allow_threads(move || model::forward(&cfg, &params, &x, train))).map(PyTensor)
    })
}

/// [`forward`]'s arguments as the core takes them.
fn forward_args(
    preset: &str,
    params: &Bound<'_, PyDict>,
    x: &Bound<'_, PyAny>,
    num_classes: i64,
    conv_backend: &str,
    input_size: Option<i64>,
) -> PyResult<(crate::config::Config, model::Params, tch::Tensor)> {
    let x = tensor(x, "x")?;
    // Not given: the network for the images' size (a square 4-D batch), as the forward takes it.
    let input_size = input_size.or_else(|| match x.size()[..] {
        [_, _, h, w] if h == w => Some(h),
        _ => None,
    });
    let mut cfg = config_at(preset, num_classes, input_size)?;
    cfg.conv_backend = core(conv_backend.parse::<ConvBackend>())?;
    let params = model::Params::from_shards(shard_lists(params, "parameter")?);
    Ok((cfg, params, x))
}

/// The outputs of the stages named `layers` (the names `alexnet info` prints), in that order:
/// [`forward`] up to the deepest of them, autograd-connected.
#[pyfunction]
#[pyo3(signature = (preset, params, x, layers, train=false, num_classes=1000, conv_backend="auto", input_size=None))]
#[allow(clippy::too_many_arguments)]
pub fn activations(
    py: Python<'_>,
    preset: &str,
    params: &Bound<'_, PyDict>,
    x: &Bound<'_, PyAny>,
    layers: Vec<String>,
    train: bool,
    num_classes: i64,
    conv_backend: &str,
    input_size: Option<i64>,
) -> PyResult<Vec<PyTensor>> {
    guard(|| {
        let (cfg, params, x) = forward_args(preset, params, x, num_classes, conv_backend, input_size)?;
        let masks = train.then_some(model::Masks::Torch);
        let out = py.allow_threads(move || model::activations(&cfg, &params, &x, &layers, masks));
        Ok(core(out)?.into_iter().map(PyTensor).collect())
    })
}

/// Whole parameters split over `devices` as the two-device placement puts them (the rows of
/// `placement_table`): (name, [shard per device]) in network order, as trainable leaves.
#[pyfunction]
#[pyo3(signature = (preset, params, devices, num_classes=1000, input_size=None))]
pub fn shard(
    preset: &str,
    params: &Bound<'_, PyDict>,
    devices: &str,
    num_classes: i64,
    input_size: Option<i64>,
) -> PyResult<Vec<(String, Vec<PyTensor>)>> {
    guard(|| {
        let cfg = config_at(preset, num_classes, input_size)?;
        let placement = core(crate::placement::Placement::parse(devices))?;
        core(placement.check_available())?;
        let whole = tensors(params, "parameter")?;
        let mut shards = core(model::shard(&cfg, &placement, &whole, false).map(|p| p.into_map()))?;
        Ok(cfg
            .param_shapes()
            .into_iter()
            .filter_map(|(k, _)| shards.remove(&k).map(|v| (k, v.into_iter().map(PyTensor).collect())))
            .collect())
    })
}

/// The table `alexnet placement` prints: which rows of each parameter live on which device, for
/// square inputs of `input_size` (default: the preset's; fc6's size depends on it).
#[pyfunction]
#[pyo3(signature = (preset, devices, num_classes=1000, input_size=None))]
pub fn placement_table(preset: &str, devices: &str, num_classes: i64, input_size: Option<i64>) -> PyResult<String> {
    guard(|| {
        let cfg = config_at(preset, num_classes, input_size)?;
        core(crate::placement::Placement::parse(devices).and_then(|p| p.table(&cfg)))
    })
}

/// Freshly initialised whole parameters of a preset (CPU, float32) for square inputs of
/// `input_size` (default: the preset's), drawn from torch's global generator (seed it with
/// torch.manual_seed): the Rust initialisation; a training run with `seed` draws the same values
/// from a generator of its own.
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000, input_size=None))]
pub fn init_params(
    py: Python<'_>,
    preset: &str,
    num_classes: i64,
    input_size: Option<i64>,
) -> PyResult<Vec<(String, PyTensor)>> {
    guard(|| {
        let cfg = config_at(preset, num_classes, input_size)?;
        let mut whole = core(py.allow_threads(|| model::init_whole(&cfg)))?;
        // Network order (weight, bias, layer by layer), as torchvision's state_dict.
        Ok(cfg
            .param_shapes()
            .into_iter()
            .filter_map(|(k, _)| whole.remove(&k).map(|v| (k, PyTensor(v))))
            .collect())
    })
}

/// The paper's Fig. 3 for the first convolution's `weight` of a `preset` network: the RGB8 grid
/// (bytes, height, width) and per tower (first kernel, count, colour spread).
#[pyfunction]
pub fn filter_grid(preset: &str, weight: &Bound<'_, PyAny>) -> PyResult<FilterGrid> {
    guard(|| {
        let cfg = config(preset, 1000)?;
        let w = tensor(weight, "weight")?;
        let (image, towers) = core(crate::viz::filter_grid(&cfg, &w))?;
        let towers = towers
            .into_iter()
            .map(|t| (t.first, t.count, t.colour_spread))
            .collect();
        Ok((image.rgb, image.height, image.width, towers))
    })
}

type FilterGrid = (Vec<u8>, u32, u32, Vec<(usize, usize, f64)>);

thread_local! {
    // The caching scopes Python opened on this thread, innermost last (`alexnet_rs.ops.cpu_cache`).
    static CPU_CACHE_SCOPES: std::cell::RefCell<Vec<ops::CpuCacheScope>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Opens a caching-allocator scope on the calling thread (`ops::CpuCacheScope`); returns whether
/// the cache is active. Paired with `cpu_cache_exit` by the context manager in ops.py.
#[pyfunction]
pub fn cpu_cache_enter() -> PyResult<bool> {
    guard(|| {
        let scope = ops::CpuCacheScope::new();
        let active = scope.active();
        CPU_CACHE_SCOPES.with(|s| s.borrow_mut().push(scope));
        Ok(active)
    })
}

/// Closes this thread's innermost scope opened by `cpu_cache_enter` (none open: nothing happens).
#[pyfunction]
pub fn cpu_cache_exit() -> PyResult<()> {
    guard(|| {
        drop(CPU_CACHE_SCOPES.with(|s| s.borrow_mut().pop()));
        Ok(())
    })
}

/// The cache's counters: hits, misses, cached_bytes (held free), live_bytes (in use).
#[pyfunction]
pub fn cpu_cache_stats() -> PyResult<std::collections::HashMap<&'static str, i64>> {
    guard(|| {
        let s = ops::cpu_cache_stats();
        Ok([
            ("hits", s.hits),
            ("misses", s.misses),
            ("cached_bytes", s.cached_bytes),
            ("live_bytes", s.live_bytes),
        ]
        .into())
    })
}
