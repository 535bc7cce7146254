//! The paper's Fig. 4: for query images, the top-5 predictions and the training images whose fc7
//! vectors (the last hidden layer, 4096 wide) are nearest in Euclidean distance (a query that is
//! itself one of the training images, as with a data set without a test split, is not counted
//! as its own neighbour). The training
//! set's fc7 vectors are computed once per checkpoint and data set and cached beside the run
//! (`<run>/fc7/<checkpoint>-<key>.safetensors`, written to a temporary name and renamed; the key
//! covers every sample's file, label, size and modification time, see [`Dataset::files_key`]). The
//! cache of a checkpoint that `--keep` has since removed is removed too (each holds N x 4096
//! floats: 1 GB for Fashion-MNIST's 60000 images).
use super::eval::{image_tensor, load_trained, Trained};
use crate::checkpoint;
use crate::data::{loader::decode, Dataset, Sample, Split, View};
use crate::error::{Error, Result};
use crate::files::{fnv, stamp, FNV_START};
use crate::model;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// One query: its image, its class if known, the top-5 (class, probability), and its nearest
/// training samples (dataset index, distance, class), nearest first.
pub struct Query {
    pub name: String,
    pub image: RgbImage,
    pub label: Option<i64>,
    pub top5: Vec<(i64, f64)>,
    pub neighbours: Vec<(usize, f64, i64)>,
}

/// Where the queries come from.
pub enum Queries {
    Files(Vec<PathBuf>),
    /// The first `n` samples of the test split.
    Test(usize),
}

pub struct Neighbours {
    pub queries: Vec<Query>,
    /// Query images that could not be read (each reported as it was met).
    pub unread: usize,
    /// The searched training set (its `classes` name the queries' and neighbours' labels).
    pub train: Dataset,
    /// The network's class names (those of the top-5).
    pub classes: Vec<String>,
    pub cache: PathBuf,
}

/// The index of fc7, the last hidden fully connected layer (cnn4 has none).
fn last_hidden(t: &Trained) -> Result<usize> {
    t.cfg.fcs.len().checked_sub(2).ok_or_else(|| {
        Error::Config(format!(
            "neighbours compares fc7 vectors (the last hidden fully connected layer), and the {} network \
             has none",
            t.tc.preset
        ))
    })
}

/// Runs the queries against the training split of `data` (default: the run's own data, the
/// subset it trained on where it had a --limit-train).
pub fn neighbours(
    run: &Path,
    data: Option<PathBuf>,
    queries: Queries,
    k: usize,
    devices: &str,
    progress: &dyn Fn(u64, u64),
) -> Result<Neighbours> {
    let t = load_trained(run, devices)?;
    let mut tc = t.tc.clone();
    if data.is_some() {
        tc.limit_train = None;
    }
    (tc.devices, tc.data) = (devices.to_string(), data.or(tc.data));
    let fc7 = &t.cfg.fcs[last_hidden(&t)?].name;
    let train = tc.open(Split::Train, tc.limit_train)?;
    let tf = tc.transform(View::Center)?;
    let (inputs, unread) = read_queries(queries, &tc, &train, &tf)?;
    // The queries are read first: a bad one fails before minutes spent on the training set.
    let ckpt = checkpoint::find_latest_weights(run)?;
    let (bank, rows, cache) = fc7_bank(&t, &tc, &train, &ckpt, fc7, progress)?;
    let _guard = tch::no_grad_guard();
    // In batches: the activations of all queries at once (`--test 10000` at 224) took tens of GB.
    let mut out = Vec::with_capacity(inputs.len());
    let mut inputs = inputs;
    while !inputs.is_empty() {
        let batch: Vec<Input> = inputs.drain(..QUERY_BATCH.min(inputs.len())).collect();
        out.extend(rank(&t, fc7, (&bank, &rows), &train, batch, k)?);
    }
    Ok(Neighbours {
        queries: out,
        unread,
        train,
        classes: t.classes,
        cache,
    })
}

/// Queries per forward pass and distance matrix.
const QUERY_BATCH: usize = 64;

/// The top-5 classes and the `k` nearest training images (`bank`: their fc7 rows, `rows`: their
/// dataset indices) of a batch of queries.
fn rank(
    t: &Trained,
    fc7: &str,
    (bank, rows): (&Tensor, &[usize]),
    train: &Dataset,
    inputs: Vec<Input>,
    k: usize,
) -> Result<Vec<Query>> {
    let device = t.params.get(&format!("{}.weight", t.cfg.convs[0].name))?.device();
    let xs: Vec<Tensor> = inputs.iter().map(|q| q.3.shallow_clone()).collect();
    let x = Tensor::f_stack(&xs, 0)?.to_device(device);
    let last = t.cfg.fcs[t.cfg.fcs.len() - 1].name.clone();
    let acts = model::activations(&t.cfg, &t.params, &x, &[fc7.to_string(), last], None)?;
    let q = acts[0].to_device(tch::Device::Cpu);
    // Ranked by log-probabilities, as `predict` (probabilities past float32's range tie at 0).
    let log_probs = acts[1].f_log_softmax(-1, Kind::Float)?.to_device(tch::Device::Cpu);
    let (lp5, i5) = log_probs.f_topk(5.min(log_probs.size()[1]), -1, true, true)?;
    let p5 = lp5.f_exp()?;
    // One more than asked: a query that is itself a training image is not its own neighbour.
    let (d, nn) = Tensor::f_cdist(&q, bank, 2.0, None::<i64>)?.f_topk(
        (k + 1).min(bank.size()[0] as usize) as i64,
        -1,
        false,
        true,
    )?;
    let mut out = Vec::with_capacity(inputs.len());
    for (row, (name, image, label, _, own)) in inputs.into_iter().enumerate() {
        let r = row as i64;
        let top5 = (0..p5.size()[1])
            .map(|j| (i5.int64_value(&[r, j]), p5.double_value(&[r, j])))
            .collect();
        let neighbours = (0..nn.size()[1])
            .map(|j| {
                let idx = rows[nn.int64_value(&[r, j]) as usize];
                (idx, d.double_value(&[r, j]), train.items[idx].1)
            })
            .filter(|&(idx, _, _)| !own.as_ref().is_some_and(|s| same_sample(s, &train.items[idx].0)))
            .take(k)
            .collect();
        out.push(Query {
            name,
            image,
            label,
            top5,
            neighbours,
        });
    }
    Ok(out)
}

/// A query: its name, image, class if known, the network's input, and the sample it is where it
/// may be one of the training images.
type Input = (String, RgbImage, Option<i64>, Tensor, Option<Sample>);

/// Whether two samples are one: the same IDX index, or the same file however its path is spelt.
fn same_sample(a: &Sample, b: &Sample) -> bool {
    match (a, b) {
        (Sample::Idx(i), Sample::Idx(j)) => i == j,
        (Sample::File(p), Sample::File(q)) => p == q || super::resume::same_folder(p, q),
        _ => false,
    }
}

/// The query images that can be read (one that cannot is reported and left out, as `predict`
/// does), and how many could not.
fn read_queries(
    queries: Queries,
    tc: &super::TrainConfig,
    train: &Dataset,
    tf: &crate::data::Transform,
) -> Result<(Vec<Input>, usize)> {
    let mut inputs: Vec<Input> = Vec::new();
    let mut unread = 0;
    let mut unreadable = |e: Error| {
        crate::say::error(&e.to_string());
        unread += 1;
    };
    match queries {
        Queries::Files(paths) => {
            for p in paths {
                match crate::image::load_rgb(&p).and_then(|image| Ok((image, image_tensor(tf, &p)?))) {
                    Ok((image, x)) => inputs.push((p.display().to_string(), image, None, x, Some(Sample::File(p)))),
                    Err(e) => unreadable(e),
                }
            }
        }
        Queries::Test(n) => {
            let test = tc.open(Split::Test, None)?.labelled_as(&train.classes)?;
            // Without a test split of its own the data's training images are the queries.
            let training_images = tc
                .data
                .as_deref()
                .is_some_and(|p| Dataset::missing_test_split(p).is_some());
            if n > test.len() {
                crate::say::line(&format!(
                    "note: --test {n}, but the test split has {} images: querying them all",
                    test.len()
                ));
            }
            for i in 0..n.min(test.len()) {
                let Ok(image) = decode(&test, i).map_err(&mut unreadable) else {
                    continue;
                };
                let mut chw = vec![0f32; tf.view_len()];
                tf.apply(&image, &mut crate::data::rng::Rng::new(0), &mut chw)?;
                let s = i64::from(tf.crop);
                let x = Tensor::from_slice(&chw).f_view([3, s, s])?;
                let own = training_images.then(|| test.items[i].0.clone());
                inputs.push((format!("test #{i}"), image, Some(test.items[i].1), x, own));
            }
        }
    }
    if inputs.is_empty() {
        return Err(match unread {
            0 => Error::Config("no query images".into()),
            n => Error::SomeFailed(format!("none of the {n} query images could be read (each named above)")),
        });
    }
    Ok((inputs, unread))
}

/// The fc7 vectors `(N, D)` of the training samples that can be read (centre view; the others
/// are skipped, as training skipped them) and their dataset indices, from the cache when it
/// matches this checkpoint and data set.
fn fc7_bank(
    t: &Trained,
    tc: &super::TrainConfig,
    train: &Dataset,
    ckpt: &Path,
    fc7: &str,
    progress: &dyn Fn(u64, u64),
) -> Result<(Tensor, Vec<usize>, PathBuf)> {
    // Beside the checkpoint folders: `<run>/fc7/` for `<run>/checkpoints/ckpt-*`, else the
    // checkpoint's own parent folder's `fc7/`.
    let folder = ckpt.parent().unwrap_or(Path::new("."));
    let cache_dir = match folder.file_name() {
        Some(n) if n == "checkpoints" => folder.parent().unwrap_or(folder).join("fc7"),
        _ => folder.join("fc7"),
    };
    let settings = format!("{}|{}|{}", tc.input_size, tc.preset, train.classes.join("|"));
    let key = fnv(train.files_key(), settings.as_bytes());
    let name = ckpt
        .file_name()
        .map_or("ckpt".into(), |n| n.to_string_lossy().to_string());
    let cache = cache_dir.join(format!("{name}-{:016x}-{key:016x}.safetensors", weights_stamp(ckpt)));
    prune_stale(&cache_dir, folder);
    if let Some((feats, rows)) = read_bank(&cache, train.len()) {
        return Ok((feats, rows, cache));
    }
    crate::say::line(&format!(
        "computing the fc7 vectors of {} training images (cached in {})",
        train.len(),
        cache.display()
    ));
    let _guard = tch::no_grad_guard();
    let loader = tc.loader(train.clone(), View::Center, false)?;
    let mut rows: Vec<Tensor> = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    let total = loader.batches_per_epoch() as u64;
    for (done, batch) in loader.epoch(0).enumerate() {
        progress(done as u64, total);
        let b = batch?;
        let a = model::activations(&t.cfg, &t.params, &b.images, &[fc7.to_string()], None)?;
        rows.push(a[0].to_device(tch::Device::Cpu));
        order.extend(&b.indices);
    }
    progress(total, total);
    if order.is_empty() {
        return Err(Error::SomeFailed(format!(
            "none of the {} training images could be read (each named above)",
            train.len()
        )));
    }
    // Rows in dataset order.
    let (feats, index) = {
        let index = Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let (sorted, perm) = index.f_sort(0, false)?;
        (Tensor::f_cat(&rows, 0)?.f_index_select(0, &perm)?, sorted)
    };
    crate::files::create_dir(&cache_dir)?;
    crate::checkpoint::save_tensors(&cache, &[("fc7", &feats), ("index", &index)])?;
    order.sort_unstable();
    Ok((feats, order, cache))
}

/// A cached bank: its fc7 rows and their dataset indices (all `n` samples, in order, for a cache
/// written before unreadable samples were skipped). None if it is unreadable or does not fit.
fn read_bank(cache: &Path, n: usize) -> Option<(Tensor, Vec<usize>)> {
    let mut v = Tensor::read_safetensors(cache).ok()?;
    let feats = v
        .iter()
        .position(|(name, _)| name == "fc7")
        .map(|i| v.swap_remove(i).1)?;
    let rows: Vec<usize> = match v.iter().find(|(name, _)| name == "index") {
        Some((_, index)) => Vec::<i64>::try_from(index)
            .ok()?
            .into_iter()
            .map(usize::try_from)
            .collect::<std::result::Result<_, _>>()
            .ok()?,
        None => (0..n).collect(),
    };
    let fits = feats.size().first() == Some(&(rows.len() as i64)) && rows.iter().all(|&i| i < n);
    fits.then_some((feats, rows))
}

/// Removes the fc7 caches (`<checkpoint>-<weights>-<key>.safetensors`, both 16 hex digits) in
/// `cache_dir` of the checkpoints in `folder` that are gone or hold other weights now (a run
/// trained again into the same folder); other files are a user's, left alone. A failure to is no
/// error (a cache is only an aid).
fn prune_stale(cache_dir: &Path, folder: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some((ckpt, weights)) = name
            .strip_suffix(".safetensors")
            .and_then(|s| s.rsplit_once('-'))
            .and_then(|(rest, key)| rest.rsplit_once('-').filter(|_| is_hex16(key)))
            .filter(|(_, weights)| is_hex16(weights))
        else {
            continue;
        };
        let dir = folder.join(ckpt);
        if !dir.is_dir() || weights != format!("{:016x}", weights_stamp(&dir)) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn is_hex16(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A stamp of a checkpoint's weights file (its size and modification time).
fn weights_stamp(ckpt: &Path) -> u64 {
    stamp(FNV_START, &ckpt.join("weights.safetensors"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_stale_caches_are_pruned() {
        // A checkpoint folder outside a run caches in its parent's `fc7/`, a name a user may
        // have used: every `*-*-*.safetensors` there was taken for a stale cache and deleted.
        let folder = std::env::temp_dir().join(format!("alexnet-test-prune-{}", std::process::id()));
        let cache_dir = folder.join("fc7");
        std::fs::create_dir_all(&cache_dir).unwrap();
        let ours = format!("model-{:016x}-{:016x}.safetensors", 1u64, 2u64);
        for name in ["resnet-layer4-features.safetensors", ours.as_str(), "notes.txt"] {
            std::fs::write(cache_dir.join(name), b"x").unwrap();
        }
        prune_stale(&cache_dir, &folder);
        let mut left: Vec<String> = std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&folder).unwrap();
        assert_eq!(left, ["notes.txt", "resnet-layer4-features.safetensors"]);
    }
}
