//! The pyo3 module `alexnet_rs._native`: a thin binding over the core modules, no logic of its
//! own. Every core error becomes an instance of the matching class in `alexnet_rs.errors`.
use crate::config::{Config, Preset};
use crate::conv::ConvBackend;
use crate::data::rng::Rng;
use crate::data::{Dataset, Epoch, Loader, LoaderConfig, Normalize, Split, Transform, View};
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
        Error::Diverged { .. } => "DivergedError",
        Error::Internal(_) => "TorchError",
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

/// The preset's network as data (JSON of `Config`: conv and FC layers, LRN, pooling), for
/// code that rebuilds the graph elsewhere (the ONNX export).
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000))]
fn architecture(preset: &str, num_classes: i64) -> PyResult<String> {
    Ok(serde_json::to_string(&config(preset, num_classes)?).expect("plain data"))
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

fn parse_view(view: &str) -> PyResult<View> {
    match view {
        "train" => Ok(View::Train),
        "center" => Ok(View::Center),
        "ten_crop" => Ok(View::TenCrop),
        _ => Err(py_err(Error::Config(format!(
            "view must be train, center or ten_crop, got `{view}`"
        )))),
    }
}

/// Decodes an image file to a (H, W, 3) uint8 tensor.
#[pyfunction]
fn load_image(path: std::path::PathBuf) -> PyResult<PyTensor> {
    let img = crate::image::load_rgb(&path).map_err(py_err)?;
    let (w, h) = img.dimensions();
    Ok(PyTensor(tch::Tensor::from_slice(img.as_raw()).view([
        i64::from(h),
        i64::from(w),
        3,
    ])))
}

/// The views of one (H, W, 3) uint8 image under the pipeline's transform, as a
/// (views, 3, crop, crop) float tensor with pixels scaled to [0, 1] (no mean subtraction).
#[pyfunction]
#[pyo3(signature = (image, resize, crop, view="center", square=false, seed=0, epoch=0, index=0))]
#[allow(clippy::too_many_arguments)]
fn transform_views(
    image: PyTensor,
    resize: u32,
    crop: u32,
    view: &str,
    square: bool,
    seed: u64,
    epoch: u64,
    index: u64,
) -> PyResult<PyTensor> {
    let shape = image.size();
    if shape.len() != 3 || shape[2] != 3 || image.kind() != tch::Kind::Uint8 {
        return Err(py_err(Error::Shape(format!(
            "image must be a (H, W, 3) uint8 tensor, got {:?} {:?}",
            shape,
            image.kind()
        ))));
    }
    let bytes = Vec::<u8>::try_from(image.contiguous().flatten(0, -1)).map_err(|e| py_err(e.into()))?;
    let img = image::RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes).expect("H * W * 3 bytes");
    let view = parse_view(view)?;
    let normalize = Normalize::MeanStd {
        mean: [0.0; 3],
        std: [1.0; 3],
    };
    let tf = Transform {
        resize,
        square,
        crop,
        view,
        pca: None,
        scale: 1.0,
        normalize,
    };
    let mut out = vec![0f32; tf.view_len() * view.count()];
    tf.apply(&img, &mut Rng::for_sample(seed, epoch, index), &mut out)
        .map_err(py_err)?;
    let c = i64::from(crop);
    Ok(PyTensor(tch::Tensor::from_slice(&out).view([
        view.count() as i64,
        3,
        c,
        c,
    ])))
}

/// The Rust data loader: iterating it yields (images, labels) batches of successive epochs.
#[pyclass(module = "alexnet_rs._native")]
struct DataLoader {
    loader: Loader,
    next_epoch: u64,
}

#[pymethods]
impl DataLoader {
    #[new]
    #[pyo3(signature = (data, split="train", preset="paper", crop=224, view="train", batch_size=64, threads=0,
                        seed=0, shuffle=true, drop_last=false, on_bad_image="skip", limit=None, stats=None,
                        rank=0, world_size=1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        data: std::path::PathBuf,
        split: &str,
        preset: &str,
        crop: u32,
        view: &str,
        batch_size: usize,
        threads: usize,
        seed: u64,
        shuffle: bool,
        drop_last: bool,
        on_bad_image: &str,
        limit: Option<usize>,
        stats: Option<std::path::PathBuf>,
        rank: usize,
        world_size: usize,
    ) -> PyResult<Self> {
        let split = match split {
            "train" => Split::Train,
            "test" | "val" => Split::Test,
            _ => {
                return Err(py_err(Error::Config(format!(
                    "split must be train or test, got `{split}`"
                ))))
            }
        };
        let preset = preset.parse::<Preset>().map_err(py_err)?;
        let stats = stats
            .map(|p| crate::data::stats::Stats::load(&p))
            .transpose()
            .map_err(py_err)?;
        let mut ds = Dataset::open(&data, split).map_err(py_err)?;
        if let Some(n) = limit {
            ds = ds.subset(n, seed);
        }
        let tf = Transform::for_preset(preset, crop, parse_view(view)?, stats.as_ref());
        let on_bad_image = on_bad_image.parse().map_err(py_err)?;
        let shard = (world_size > 1 || rank > 0).then_some((rank, world_size));
        let cfg = LoaderConfig {
            batch_size,
            threads,
            seed,
            shuffle,
            drop_last,
            on_bad_image,
            shard,
            ..LoaderConfig::default()
        };
        Ok(DataLoader {
            loader: Loader::new(ds, tf, cfg).map_err(py_err)?,
            next_epoch: 0,
        })
    }

    /// Batches per epoch.
    fn __len__(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    /// Class names, label order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.loader.dataset().classes.clone()
    }

    #[getter]
    fn num_samples(&self) -> usize {
        self.loader.dataset().len()
    }

    /// The batches of epoch `epoch` (its shuffle and augmentation depend on it and the seed).
    fn epoch(&self, epoch: u64) -> EpochIter {
        EpochIter {
            inner: Some(self.loader.epoch(epoch)),
        }
    }

    fn __iter__(&mut self) -> EpochIter {
        self.next_epoch += 1;
        self.epoch(self.next_epoch - 1)
    }
}

#[pyclass(module = "alexnet_rs._native")]
struct EpochIter {
    inner: Option<Epoch>,
}

#[pymethods]
impl EpochIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<(PyTensor, PyTensor)>> {
        let Some(mut epoch) = self.inner.take() else {
            return Ok(None);
        };
        let (epoch, item) = py.allow_threads(move || {
            let item = epoch.next();
            (epoch, item)
        });
        self.inner = Some(epoch); // kept after the end too, for `skipped`
        match item {
            None => Ok(None),
            Some(Err(e)) => Err(py_err(e)),
            Some(Ok(b)) => Ok(Some((PyTensor(b.images), PyTensor(b.labels)))),
        }
    }

    /// Bad images skipped so far in this epoch.
    #[getter]
    fn skipped(&self) -> usize {
        self.inner.as_ref().map_or(0, Epoch::skipped)
    }

    fn __len__(&self) -> usize {
        self.inner.as_ref().map_or(0, Epoch::len)
    }
}

/// The table `alexnet placement` prints: which rows of each parameter live on which device.
#[pyfunction]
#[pyo3(signature = (preset, devices, num_classes=1000))]
fn placement_table(preset: &str, devices: &str, num_classes: i64) -> PyResult<String> {
    let cfg = config(preset, num_classes)?;
    crate::placement::Placement::parse(devices)
        .and_then(|p| p.table(&cfg))
        .map_err(py_err)
}

/// Runs the Rust training loop with the GIL released. `config` is a dict of TrainConfig fields
/// (see `alexnet train --help`); `on_step(dict)` receives every step's and epoch's metrics.
/// Ctrl-C (KeyboardInterrupt) stops cleanly after a checkpoint, then is re-raised.
#[pyfunction]
#[pyo3(signature = (config, on_step=None, resume=None))]
fn train(
    py: Python<'_>,
    config: &Bound<'_, pyo3::types::PyDict>,
    on_step: Option<PyObject>,
    resume: Option<std::path::PathBuf>,
) -> PyResult<PyObject> {
    let json: String = py.import("json")?.call_method1("dumps", (config,))?.extract()?;
    let tc: crate::train::TrainConfig =
        serde_json::from_str(&json).map_err(|e| py_err(Error::Config(format!("train config: {e}"))))?;
    let interrupted = std::sync::atomic::AtomicBool::new(false);
    let callback_error: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
    let result = py.allow_threads(|| {
        let mut on_event = |e: &crate::train::Event| {
            let Some(cb) = &on_step else { return };
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
                    callback_error.lock().expect("lock").get_or_insert(err);
                }
            });
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
    eval_dict(py, &result.map_err(py_err)?)
}

/// Freshly initialised whole parameters of a preset (CPU, float32), drawn from torch's global
/// generator (seed it with torch.manual_seed): the Rust initialisation, the same as the CLI's.
#[pyfunction]
#[pyo3(signature = (preset, num_classes=1000))]
fn init_params(preset: &str, num_classes: i64) -> PyResult<Vec<(String, PyTensor)>> {
    let cfg = config(preset, num_classes)?;
    let mut whole = model::init_whole(&cfg).map_err(py_err)?;
    // Network order (weight, bias, layer by layer), as torchvision's state_dict.
    Ok(cfg
        .param_shapes()
        .into_iter()
        .filter_map(|(k, _)| whole.remove(&k).map(|v| (k, PyTensor(v))))
        .collect())
}

/// Top-1/top-5 accuracy of a checkpoint (run folder or ckpt folder) on its run's test split
/// (or `data`'s), centre crop or the average over 10 crops.
#[pyfunction]
#[pyo3(signature = (checkpoint, data=None, ten_crop=false, limit=None, batch_size=128, devices="cpu"))]
fn evaluate(
    py: Python<'_>,
    checkpoint: std::path::PathBuf,
    data: Option<std::path::PathBuf>,
    ten_crop: bool,
    limit: Option<usize>,
    batch_size: usize,
    devices: &str,
) -> PyResult<PyObject> {
    let devices = devices.to_string();
    let r = py
        .allow_threads(move || {
            crate::train::evaluate_checkpoint(&checkpoint, data, ten_crop, limit, batch_size, &devices)
        })
        .map_err(py_err)?;
    eval_dict(py, &r)
}

fn eval_dict(py: Python<'_>, r: &crate::train::EvalResult) -> PyResult<PyObject> {
    let d = pyo3::types::PyDict::new(py);
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
    params: HashMap<String, PyTensor>,
    out: std::path::PathBuf,
    classes: Option<Vec<String>>,
    input_size: Option<u32>,
) -> PyResult<std::path::PathBuf> {
    let p = preset.parse::<Preset>().map_err(py_err)?;
    let size = input_size.unwrap_or(Config::preset(p, 1).map_err(py_err)?.input_size as u32);
    let weights: BTreeMap<String, tch::Tensor> = params.into_iter().map(|(k, v)| (k, v.0)).collect();
    crate::checkpoint::save_weights(&out, p, size, &weights, classes).map_err(py_err)
}

/// Loads and validates a checkpoint (a run folder: its newest; or a ckpt folder): (preset,
/// class names, whole weights in network order).
#[pyfunction]
fn load_checkpoint(path: std::path::PathBuf) -> PyResult<(String, Vec<String>, Vec<(String, PyTensor)>)> {
    let mut c = crate::checkpoint::load(&path).map_err(py_err)?;
    let cfg = c
        .state
        .config
        .model_config(c.state.classes.len() as i64)
        .map_err(py_err)?;
    let weights = cfg
        .param_shapes()
        .into_iter()
        .filter_map(|(k, _)| c.weights.remove(&k).map(|v| (k, PyTensor(v))));
    Ok((
        c.state.config.preset.clone(),
        c.state.classes.clone(),
        weights.collect(),
    ))
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
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add_function(wrap_pyfunction!(placement_table, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(init_params, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(save_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(load_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(transform_views, m)?)?;
    m.add_class::<DataLoader>()?;
    m.add_class::<EpochIter>()?;
    Ok(())
}
