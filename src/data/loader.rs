//! The parallel, deterministic batch loader: decoding and transforms on a rayon pool, a bounded
//! prefetch queue filled by a producer thread, batches as tch tensors on the target device.
//!
//! Determinism: the epoch's order is a permutation seeded by (seed, epoch), and each sample's
//! random choices come from a generator seeded by (seed, epoch, index): the same seed gives the
//! same batches whatever the thread count. Bad files are skipped and counted (or end the epoch
//! with an error naming the file, with `OnBadImage::Fail`).
use crate::data::rng::{permutation, Rng};
use crate::data::source::{Dataset, Sample};
use crate::data::transform::Transform;
use crate::error::{Error, Result};
use crate::image::load_rgb;
use image::RgbImage;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tch::{Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBadImage {
    /// Skip the file, count it, report it at the end of the epoch.
    Skip,
    /// Stop with an error naming the file.
    Fail,
}

impl std::str::FromStr for OnBadImage {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(OnBadImage::Skip),
            "fail" => Ok(OnBadImage::Fail),
            _ => Err(Error::Config(format!("--on-bad-image must be skip or fail, got `{s}`"))),
        }
    }
}

/// The most data threads a pool may have (each started thread costs memory and time: 100,000
/// took minutes to start).
pub const MAX_THREADS: usize = 256;

/// Refuses a thread count over [`MAX_THREADS`].
pub fn check_threads(threads: usize) -> Result<()> {
    if threads > MAX_THREADS {
        return Err(Error::Config(format!(
            "threads must be at most {MAX_THREADS} (0: one per core), got {threads}"
        )));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Decoding threads (rayon); 0 = one per core.
    pub threads: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    pub on_bad_image: OnBadImage,
    pub device: Device,
    /// Distributed data parallel: (rank, world size). Every rank walks the same shuffled order
    /// in global batches of batch_size * world and takes its own batch_size-slice of each.
    pub shard: Option<(usize, usize)>,
    /// With a shard: keep the last, incomplete global batch (each rank takes what falls in its
    /// slice, maybe nothing), so that the ranks together see every sample once (evaluation).
    /// Without it, every rank gets the same number of full batches (training): a batch whose
    /// images were all bad (skipped) then comes as an empty batch, not left out, so that the
    /// ranks' steps (and their collectives) stay in step and a run knows its place in the epoch
    /// (the trainer's one-process loader is a shard (0, 1) for that).
    pub keep_tail: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 128,
            threads: 0,
            prefetch: 2,
            seed: 0,
            shuffle: true,
            drop_last: false,
            on_bad_image: OnBadImage::Skip,
            device: Device::Cpu,
            shard: None,
            keep_tail: false,
        }
    }
}

/// One batch: `images` is (B * views, 3, crop, crop) float32, views of a sample adjacent;
/// `labels` is (B,) int64; `indices` are the dataset indices.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

pub struct Loader {
    dataset: Arc<Dataset>,
    transform: Arc<Transform>,
    cfg: LoaderConfig,
    pool: Arc<Pool>,
    /// Batches per epoch (this rank's), fixed by the above.
    batches: usize,
}

/// Decodes sample `i` of the dataset to RGB8.
pub fn decode(ds: &Dataset, i: usize) -> Result<RgbImage> {
    match &ds.items[i].0 {
        Sample::File(path) => load_rgb(path),
        Sample::Idx(k) => {
            let idx = ds.idx.as_ref().expect("IDX samples come with their images");
            let grey = idx.image(*k);
            let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v, v, v]).collect();
            Ok(RgbImage::from_raw(idx.cols as u32, idx.rows as u32, rgb).expect("rows * cols * 3 bytes"))
        }
    }
}

/// An error about sample `i` (e.g. its transform's), naming the sample (its file, or the IDX
/// file and index).
pub(crate) fn sample_error(ds: &Dataset, i: usize) -> impl FnOnce(Error) -> Error + '_ {
    move |e| Error::File {
        path: match &ds.items[i].0 {
            Sample::File(p) => p.clone(),
            Sample::Idx(k) => format!("{} image {k}", ds.origin.display()).into(),
        },
        reason: e.to_string(),
    }
}

impl Loader {
    pub fn new(dataset: Dataset, transform: Transform, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch_size == 0 {
            return Err(Error::Config("batch size must be >= 1".into()));
        }
        if let Some((rank, world)) = cfg.shard {
            if world == 0 || rank >= world {
                return Err(Error::Config(format!(
                    "rank {rank} is not in a world of {world} (world_size >= 1, 0 <= rank < world_size)"
                )));
            }
            // The global batch; it wrapped to 0 (a panic in chunks(0)) or to a wrong size.
            if cfg.batch_size.checked_mul(world).is_none() {
                return Err(Error::Config(format!(
                    "batch size {} x {world} ranks is too large",
                    cfg.batch_size
                )));
            }
        }
        transform.check()?;
        check_threads(cfg.threads)?;
        let pool = Pool::new(cfg.threads)?;
        let mut loader = Loader {
            dataset: Arc::new(dataset),
            transform: Arc::new(transform),
            cfg,
            pool: Arc::new(pool),
            batches: 0,
        };
        loader.batches = loader.chunks(&(0..loader.dataset.len()).collect::<Vec<_>>()).len();
        Ok(loader)
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Number of batches in an epoch (of this rank, when sharded).
    pub fn batches_per_epoch(&self) -> usize {
        self.batches
    }

    /// Why an epoch has no batch; `None` when it has one.
    pub fn why_empty(&self) -> Option<String> {
        let (n, b, tail) = (self.dataset.len(), self.cfg.batch_size, self.cfg.keep_tail);
        let partial = "(drop_last: a partial batch is left out)";
        (self.batches == 0).then(|| match self.cfg.shard {
            _ if n == 0 => "it has no samples".into(),
            Some((r, w)) if tail && r * b >= n => format!(
                "rank {r} of {w} gets none of the {n} samples (an evaluation view's shards cover them once, batch \
                 size {b} per rank)"
            ),
            Some((r, w)) if tail => {
                format!("the share of rank {r} of {w} in the {n} samples is no full batch of {b} {partial}")
            }
            Some((_, w)) if w > 1 => format!("its {n} samples make no full global batch of {b} x {w} ranks"),
            _ => format!("its {n} samples make no full batch of {b} {partial}"),
        })
    }

    /// An epoch's order cut into this rank's batches.
    fn chunks(&self, order: &[usize]) -> Vec<Vec<usize>> {
        let b = self.cfg.batch_size;
        let (rank, world) = self.cfg.shard.unwrap_or((0, 1));
        let global = b * world;
        let mut chunks: Vec<Vec<usize>> = order
            .chunks(global)
            .filter(|c| c.len() == global || !(self.cfg.drop_last || (world > 1 && !self.cfg.keep_tail)))
            .map(|c| c[(rank * b).min(c.len())..((rank + 1) * b).min(c.len())].to_vec())
            .filter(|c| !c.is_empty())
            .collect();
        if self.cfg.drop_last && chunks.last().is_some_and(|c| c.len() < b) {
            chunks.pop();
        }
        chunks
    }

    /// The epoch's sample order.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        if self.cfg.shuffle {
            permutation(
                self.dataset.len(),
                self.cfg.seed ^ epoch.wrapping_mul(0x2545_f491_4f6c_dd1d),
            )
        } else {
            (0..self.dataset.len()).collect()
        }
    }

    /// Starts decoding epoch `epoch` in the background and returns its batches in order.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// Epoch `epoch` from its batch `start` on (resuming mid-epoch: the skipped batches are
    /// not decoded, the rest are the very batches an uninterrupted epoch would give).
    pub fn epoch_from(&self, epoch: u64, start: usize) -> Epoch {
        let mut chunks = self.chunks(&self.order(epoch));
        chunks.drain(..start.min(chunks.len()));
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let skipped = Arc::new(AtomicUsize::new(0));
        let (ds, tf, pool, cfg, sk) = (
            self.dataset.clone(),
            self.transform.clone(),
            self.pool.clone(),
            self.cfg.clone(),
            skipped.clone(),
        );
        let total = chunks.len();
        let producer = std::thread::spawn(move || {
            let pool = match pool.get() {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for chunk in chunks {
                // A panic (a bug) becomes the epoch's error, never a silently shorter epoch.
                let build = || pool.install(|| build_batch(&ds, &tf, &cfg, epoch, &chunk, &sk));
                let batch = crate::error::catch_panic(build)
                    .unwrap_or_else(|message| Err(Error::Internal(format!("a data thread panicked: {message}"))));
                let stop = batch.is_err();
                if tx.send(batch).is_err() || stop {
                    return; // consumer gone, or an error ends the epoch
                }
            }
        });
        Epoch {
            rx: Mutex::new(rx),
            producer: Some(producer),
            pid: std::process::id(),
            skipped,
            total,
            device: self.cfg.device,
            same_steps: self.cfg.shard.is_some() && !self.cfg.keep_tail,
        }
    }
}

/// Decodes and transforms one chunk of samples straight into a fresh batch tensor (one
/// allocation, one write per value), on the rayon pool; bad samples are skipped or fail.
fn build_batch(
    ds: &Dataset,
    tf: &Transform,
    cfg: &LoaderConfig,
    epoch: u64,
    chunk: &[usize],
    skipped: &AtomicUsize,
) -> Result<RawBatch> {
    use rayon::prelude::*;
    let (views, crop) = (tf.view.count() as i64, i64::from(tf.crop));
    let per = tf.view_len() * tf.view.count();
    let images = Tensor::f_empty(
        [chunk.len() as i64 * views, 3, crop, crop],
        (tch::Kind::Float, Device::Cpu),
    )?;
    // SAFETY: `images` is a fresh contiguous float tensor of exactly chunk.len() * per values,
    // alive for the whole borrow; the workers write disjoint chunks of it.
    let data = unsafe { std::slice::from_raw_parts_mut(images.data_ptr() as *mut f32, per * chunk.len()) };
    let results: Vec<Result<()>> = data
        .par_chunks_mut(per)
        .zip(chunk.par_iter())
        .map(|(out, &i)| {
            let img = decode(ds, i)?;
            let mut rng = Rng::for_sample(cfg.seed, epoch, i as u64);
            let r = tf.apply(&img, &mut rng, out);
            crate::image::recycle(img.into_raw());
            r.map_err(sample_error(ds, i))
        })
        .collect();
    let mut kept = Vec::with_capacity(chunk.len());
    let mut bad = Vec::new();
    for (pos, (r, &i)) in results.into_iter().zip(chunk).enumerate() {
        match r {
            Ok(()) => kept.push((pos, i)),
            Err(e) if cfg.on_bad_image == OnBadImage::Skip => {
                skipped.fetch_add(1, Ordering::Relaxed);
                bad.push(format!("skipping bad image: {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    let images = if kept.len() == chunk.len() {
        images
    } else {
        // Drop the rows (all views) of the skipped samples.
        let rows: Vec<i64> = kept
            .iter()
            .flat_map(|&(pos, _)| (0..views).map(move |v| pos as i64 * views + v))
            .collect();
        images.index_select(0, &Tensor::from_slice(&rows))
    };
    let labels: Vec<i64> = kept.iter().map(|&(_, i)| ds.items[i].1).collect();
    Ok(RawBatch {
        images,
        labels,
        indices: kept.into_iter().map(|(_, i)| i).collect(),
        bad,
    })
}

/// A batch as built by the producer, still on the CPU.
struct RawBatch {
    images: Tensor,
    labels: Vec<i64>,
    indices: Vec<usize>,
    /// What was wrong with each skipped sample: said on the consumer's thread, where Python's
    /// `DataLoader` and `train` turn it into a warning (the decoding threads' stderr lines never
    /// reached a notebook).
    bad: Vec<String>,
}

/// The decoding threads. A process forked from ours (a torch `DataLoader`'s worker, a
/// multiprocessing pool) inherits a copy of the pool without its threads, where an epoch waited
/// forever: there a pool of its own is built on first use.
struct Pool {
    threads: usize,
    /// The process the pool's threads belong to, and the pool (dropped by that process alone).
    inner: Mutex<(u32, ManuallyDrop<Arc<rayon::ThreadPool>>)>,
}

impl Pool {
    fn new(threads: usize) -> Result<Pool> {
        Ok(Pool {
            threads,
            inner: Mutex::new((std::process::id(), ManuallyDrop::new(Arc::new(Pool::build(threads)?)))),
        })
    }

    fn build(threads: usize) -> Result<rayon::ThreadPool> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("alexnet-data-{i}"))
            .start_handler(|_| crate::error::quiet_worker_panics())
            .build()
            .map_err(|e| Error::Config(format!("cannot start {threads} decoding threads: {e}")))
    }

    /// This process's pool.
    fn get(&self) -> Result<Arc<rayon::ThreadPool>> {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.0 != std::process::id() {
            // The parent's pool is leaked, not dropped: its threads are not in this process, and
            // the fork may have copied its state mid-change.
            inner.1 = ManuallyDrop::new(Arc::new(Pool::build(self.threads)?));
            inner.0 = std::process::id();
        }
        Ok(Arc::clone(&inner.1))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let (pid, pool) = self.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *pid == std::process::id() {
            // SAFETY: dropped once, here; `pool` is not used after.
            unsafe { ManuallyDrop::drop(pool) };
        }
    }
}

/// The batches of one epoch, in order. Dropping it stops the producer.
pub struct Epoch {
    // (A Mutex only to make Epoch Sync, for the Python binding; one consumer locks it.)
    rx: Mutex<Receiver<Result<RawBatch>>>,
    producer: Option<JoinHandle<()>>,
    /// The process whose thread produces the batches (not a forked copy of it, where it is gone).
    pid: u32,
    skipped: Arc<AtomicUsize>,
    total: usize,
    device: Device,
    /// A training shard's epoch: every batch is yielded, empty or not (see `keep_tail`).
    same_steps: bool,
}

impl Epoch {
    /// Bad images skipped so far this epoch.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Batches this epoch will yield at most: fewer where every image of a batch was bad (outside
    /// a training shard, such a batch is left out) or an error ends the epoch.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.pid != std::process::id() {
            return Some(Err(Error::Config(
                "this epoch was started in another process (this one is a fork of it), whose thread \
                 decodes its batches: start the epoch in this process (loader.epoch(n))"
                    .into(),
            )));
        }
        let raw = loop {
            let Ok(received) = self.rx.get_mut().expect("receiver lock").recv() else {
                // The producer is gone: the epoch's end, or a thread that died.
                let died = self.producer.take().and_then(|p| p.join().err());
                return died.map(|p| {
                    Err(Error::Internal(format!(
                        "a data thread died: {}",
                        crate::error::panic_message(&*p)
                    )))
                });
            };
            if let Ok(b) = &received {
                b.bad.iter().for_each(|m| crate::say::warning(m));
            }
            match received {
                // Every image of this batch was bad: move on to the next one (a loop: a long run
                // of bad files must not grow the stack).
                Ok(b) if b.indices.is_empty() && !self.same_steps => {}
                Ok(b) => break b,
                Err(e) => return Some(Err(e)),
            }
        };
        let images = raw.images.to_device(self.device);
        let labels = Tensor::from_slice(&raw.labels).to_device(self.device);
        Some(Ok(Batch {
            images,
            labels,
            indices: raw.indices,
        }))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // A fork's copy: the producer is not in this process and the channel may have been
            // copied mid-send; both are leaked.
            std::mem::forget(self.producer.take());
            let (_, dead) = sync_channel(1);
            std::mem::forget(std::mem::replace(
                self.rx.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner),
                dead,
            ));
            return;
        }
        // Unblock the producer (its send fails once the receiver is gone), then join it.
        let (_, dead) = sync_channel(1);
        let rx = std::mem::replace(self.rx.get_mut().expect("receiver lock"), dead);
        drop(rx);
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}
