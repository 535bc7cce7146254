//! Bindings of the data pipeline (`crate::data`): the loader, its epochs, image decoding and the
//! transforms. Every argument is checked by name here; every entry point runs under [`guard`].
use super::boundary::{core, count, guard, index as nonneg, py_err, side, tensor};
use crate::data::rng::Rng;
use crate::data::{Dataset, Epoch, Loader, LoaderConfig, Normalize, Split, Transform, View};
use crate::error::Error;
use crate::Preset;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use std::path::{Path, PathBuf};

/// Decodes an image file to a (H, W, 3) uint8 tensor.
#[pyfunction]
pub fn load_image(py: Python<'_>, path: PathBuf) -> PyResult<PyTensor> {
    guard(|| {
        let t = py.allow_threads(|| {
            let img = crate::image::load_rgb(&path)?;
            let (w, h) = img.dimensions();
            Ok::<_, Error>(tch::Tensor::from_slice(img.as_raw()).f_view([i64::from(h), i64::from(w), 3])?)
        });
        core(t).map(PyTensor)
    })
}

/// The views of one (H, W, 3) uint8 image under the pipeline's transform, as a
/// (views, 3, crop, crop) float tensor with pixels scaled to [0, 1] (no mean subtraction).
#[pyfunction]
#[pyo3(signature = (image, resize, crop, view="center", square=false, seed=0, epoch=0, index=0))]
#[allow(clippy::too_many_arguments)]
pub fn transform_views(
    py: Python<'_>,
    image: &Bound<'_, PyAny>,
    resize: i64,
    crop: i64,
    view: &str,
    square: bool,
    seed: i64,
    epoch: i64,
    index: i64,
) -> PyResult<PyTensor> {
    guard(|| {
        let image = tensor(image, "image")?;
        let shape = image.size();
        if image.kind() != tch::Kind::Uint8 {
            return Err(py_err(Error::Dtype(format!(
                "image must be a uint8 tensor, got dtype {:?}",
                image.kind()
            ))));
        }
        if shape.len() != 3 || shape[2] != 3 {
            return Err(py_err(Error::Shape(format!(
                "image must be (H, W, 3), got shape {shape:?}"
            ))));
        }
        let (resize, crop) = (side("resize", resize)?, side("crop", crop)?);
        let (seed, epoch, index) = (nonneg("seed", seed)?, nonneg("epoch", epoch)?, nonneg("index", index)?);
        let tf = Transform {
            resize,
            square,
            crop,
            view: core(view.parse::<View>())?,
            pca: None,
            scale: 1.0,
            normalize: Normalize::MeanStd {
                mean: [0.0; 3],
                std: [1.0; 3],
            },
        };
        core(tf.check())?;
        let flat = core(
            image
                .f_contiguous()
                .and_then(|t| t.f_flatten(0, -1))
                .map_err(Error::from),
        )?;
        let t = py.allow_threads(move || {
            let bytes = Vec::<u8>::try_from(flat)?;
            let img = image::RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes).expect("H * W * 3 bytes");
            let mut out = vec![0f32; tf.view_len() * tf.view.count()];
            tf.apply(&img, &mut Rng::for_sample(seed, epoch, index), &mut out)?;
            let c = i64::from(crop);
            Ok::<_, Error>(tch::Tensor::from_slice(&out).f_view([tf.view.count() as i64, 3, c, c])?)
        });
        core(t).map(PyTensor)
    })
}

/// The Rust data loader: iterating it yields (images, labels) batches of successive epochs.
/// With `rank` and/or `world_size` given (even `world_size=1`) it is that rank's shard of every
/// global batch. With `view="train"` every rank gets the same number of full batches, and a batch
/// whose images were all unreadable comes empty in its place (skip it, as the Rust training loop
/// does); without a shard such a batch is left out. With an evaluation view (`center`,
/// `ten_crop`) the shards together cover every sample once: the last global batch is split as
/// far as it goes, so ranks may get one batch fewer or a smaller one. See `alexnet_rs.data`'s
/// module help.
/// (`subclass`: `alexnet_rs.data.DataLoader` maps Python's own argument errors onto ours.)
#[pyclass(module = "alexnet_rs._native", subclass)]
pub struct DataLoader {
    loader: Loader,
    next_epoch: u64,
}

/// The (rank, world size) of a loader given either (even a world of 1): a shard, whose training
/// epochs keep a batch of only unreadable images (empty) in its place, as the training loop's
/// loader does. `None`: neither was given.
fn shard(rank: Option<i64>, world_size: Option<i64>) -> PyResult<Option<(usize, usize)>> {
    if rank.is_none() && world_size.is_none() {
        return Ok(None);
    }
    let (world_size, rank) = (
        count("world_size", world_size.unwrap_or(1), 1)?,
        count("rank", rank.unwrap_or(0), 0)?,
    );
    if rank >= world_size {
        return Err(py_err(Error::Config(format!(
            "rank must be below world_size ({world_size}), got {rank}"
        ))));
    }
    Ok(Some((rank, world_size)))
}

/// `data`'s `split` (its warnings said through `warn`), labelled as the training split (or
/// `classes`: a val/ that lacks a class would shift the labels of the classes after it), cut to a
/// random subset of `limit` samples.
fn open_dataset(
    py: Python<'_>,
    data: &Path,
    split: Split,
    classes: Option<Vec<String>>,
    limit: Option<usize>,
    seed: u64,
    warn: &dyn Fn(String) -> PyResult<()>,
) -> PyResult<Dataset> {
    let mut ds = core(py.allow_threads(|| Dataset::open(data, split)))?;
    for w in ds.warnings(data, split) {
        warn(w)?;
    }
    let classes = classes.or_else(|| {
        (split == Split::Test)
            .then(|| Dataset::training_classes(data))
            .flatten()
    });
    if let Some(classes) = classes {
        core(crate::data::check_class_names(&classes))?;
        ds = core(ds.labelled_as(&classes))?;
    }
    Ok(match limit {
        Some(n) => ds.subset(n, seed),
        None => ds,
    })
}

#[pymethods]
impl DataLoader {
    #[new]
    #[pyo3(signature = (data, split="train", preset="paper", crop=224, view="train", batch_size=64, threads=0,
                        seed=0, shuffle=true, drop_last=false, on_bad_image="skip", limit=None, stats=None,
                        rank=None, world_size=None, classes=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data: PathBuf,
        split: &str,
        preset: &str,
        crop: i64,
        view: &str,
        batch_size: i64,
        threads: i64,
        seed: i64,
        shuffle: bool,
        drop_last: bool,
        on_bad_image: &str,
        limit: Option<i64>,
        stats: Option<PathBuf>,
        rank: Option<i64>,
        world_size: Option<i64>,
        classes: Option<Vec<String>>,
    ) -> PyResult<Self> {
        guard(|| {
            let split = core(split.parse::<Split>())?;
            let (crop, batch_size, threads) = (
                side("crop", crop)?,
                count("batch_size", batch_size, 1)?,
                count("threads", threads, 0)?,
            );
            let (seed, limit) = (nonneg("seed", seed)?, limit.map(|n| count("limit", n, 1)).transpose()?);
            let shard = shard(rank, world_size)?;
            let view = core(view.parse::<View>())?;
            let on_bad_image = on_bad_image.parse().map_err(|_| {
                py_err(Error::Config(format!(
                    "on_bad_image must be skip or fail, got `{on_bad_image}`"
                )))
            })?;
            let preset = core(preset.parse::<Preset>())?;
            // The slow parts (reading the stats, walking the folder, starting the loader) run
            // without the GIL, so that other Python threads go on.
            let stats = core(py.allow_threads(|| stats.map(|p| crate::data::stats::Stats::load(&p)).transpose()))?;
            let warn = |w: String| {
                // stacklevel 3: past `checked` and `DataLoader.__new__`, the caller's line.
                py.import("warnings")?
                    .call_method1("warn", (w, py.get_type::<pyo3::exceptions::PyUserWarning>(), 3))
                    .map(drop)
            };
            if let Some(w) = stats
                .as_ref()
                .and_then(|s| crate::data::transform::unused_stats(preset, crop, s))
            {
                warn(w)?;
            }
            let ds = open_dataset(py, &data, split, classes, limit, seed, &warn)?;
            let tf = Transform::for_preset(preset, crop, view, stats.as_ref());
            let cfg = LoaderConfig {
                batch_size,
                threads,
                seed,
                shuffle,
                drop_last,
                on_bad_image,
                shard,
                // An evaluation view's shards together cover every sample once (the last global
                // batch split as far as it goes), as the Rust evaluation's loader does.
                keep_tail: view != View::Train,
                ..LoaderConfig::default()
            };
            let loader = core(py.allow_threads(move || Loader::new(ds, tf, cfg)))?;
            if let Some(why) = loader.why_empty() {
                warn(format!("DataLoader: {why}: every epoch is empty"))?;
            }
            Ok(DataLoader { loader, next_epoch: 0 })
        })
    }

    /// Batches per epoch, at most: a batch whose images were all bad is left out (but for a
    /// training shard's, yielded empty).
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
    fn epoch(&self, epoch: i64) -> PyResult<EpochIter> {
        guard(|| {
            Ok(EpochIter {
                inner: Some(self.loader.epoch(nonneg("epoch", epoch)?)),
            })
        })
    }

    fn __iter__(&mut self) -> PyResult<EpochIter> {
        self.next_epoch += 1;
        self.epoch(self.next_epoch as i64 - 1)
    }
}

/// One epoch's batches (from `DataLoader.epoch(n)` or `iter(loader)`).
#[pyclass(module = "alexnet_rs._native")]
pub struct EpochIter {
    inner: Option<Epoch>,
}

#[pymethods]
impl EpochIter {
    #[new]
    fn new() -> PyResult<Self> {
        Err(py_err(Error::Dtype(
            "EpochIter is not made directly: use DataLoader.epoch(n) or iter(loader)".into(),
        )))
    }

    // Not borrowed: another thread inside next() holds the epoch (pyo3's bare "Already mutably
    // borrowed" was the error).
    fn __iter__<'py>(slf: &Bound<'py, Self>) -> Bound<'py, Self> {
        slf.clone()
    }

    fn __next__(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<Option<(PyTensor, PyTensor)>> {
        guard(|| {
            let mut this = slf.try_borrow_mut().map_err(|_| busy())?;
            let Some(mut epoch) = this.inner.take() else {
                return Ok(None);
            };
            let ((epoch, item), skips) = py.allow_threads(move || {
                crate::say::capture_warnings(|| {
                    let item = epoch.next();
                    (epoch, item)
                })
            });
            this.inner = Some(epoch); // kept after the end too, for `skipped`
            let warnings = py.import("warnings")?;
            for w in skips {
                // Each skipped image, named, at the caller's loop.
                warnings.call_method1("warn", (w, py.get_type::<pyo3::exceptions::PyUserWarning>(), 1))?;
            }
            match item {
                None => Ok(None),
                Some(Err(e)) => Err(py_err(e)),
                Some(Ok(b)) => Ok(Some((PyTensor(b.images), PyTensor(b.labels)))),
            }
        })
    }

    /// Bad images skipped so far in this epoch.
    #[getter]
    fn skipped(slf: &Bound<'_, Self>) -> PyResult<usize> {
        EpochIter::count(slf, Epoch::skipped)
    }

    fn __len__(slf: &Bound<'_, Self>) -> PyResult<usize> {
        EpochIter::count(slf, Epoch::len)
    }
}

impl EpochIter {
    /// `f` of the epoch (0 once it is over), or the busy error while another thread is in `next()`.
    fn count(slf: &Bound<'_, Self>, f: fn(&Epoch) -> usize) -> PyResult<usize> {
        Ok(slf.try_borrow().map_err(|_| busy())?.inner.as_ref().map_or(0, f))
    }
}

/// Another thread is inside `next()` of this epoch (as a generator, it cannot be shared).
fn busy() -> PyErr {
    py_err(Error::Config(
        "this epoch is being read by another thread: give each thread its own iterator \
         (DataLoader.epoch(n), with a rank/world_size shard each if they must not overlap)"
            .into(),
    ))
}
