//! IDX files (MNIST / Fashion-MNIST, gzipped or not) and the default data set, Fashion-MNIST
//! from Debian's `dataset-fashion-mnist` (or where `$ALEXNET_FASHION_MNIST` says).
use super::source::{data_err, Dataset, Sample, Split};
use crate::error::{io, Error, Result};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The default dataset's folder: `$ALEXNET_FASHION_MNIST` if set, else [`FASHION_MNIST_DIR`].
pub fn fashion_mnist_dir() -> PathBuf {
    std::env::var_os("ALEXNET_FASHION_MNIST").map_or_else(|| PathBuf::from(FASHION_MNIST_DIR), PathBuf::from)
}

/// Greyscale images of one IDX file, `count` x `rows` x `cols` bytes.
#[derive(Debug)]
pub struct IdxImages {
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl IdxImages {
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

impl Dataset {
    /// Fashion-MNIST-style IDX files in `dir` (`train-…` or `t10k-…`, gzipped or not). The class
    /// names are a `classes.txt` beside them (one per line, as a list file's), else Fashion-MNIST's.
    pub fn idx_folder(dir: &Path, split: Split) -> Result<Dataset> {
        let images = idx_path(dir, split, "images")
            .ok_or_else(|| data_err(dir, "no <train|t10k>-images-idx3-ubyte[.gz] file here"))?;
        let labels = idx_path(dir, split, "labels")
            .ok_or_else(|| data_err(dir, "no <train|t10k>-labels-idx1-ubyte[.gz] file here"))?;
        let names = dir.join("classes.txt");
        if !names.is_file() {
            let classes = FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect();
            return Dataset::idx(&images, &labels, classes);
        }
        let mut ds = Dataset::idx(&images, &labels, vec![])?;
        let max = ds.items.iter().map(|&(_, l)| l).max().unwrap_or(0);
        ds.classes = super::source::class_names(&names, max)?;
        Ok(ds)
    }

    /// The IDX pair `images` and `labels`, labels naming `classes` (none given: named by their
    /// numbers). A label past the classes is an error naming it (a 201-way network of classes
    /// "0".."200" was trained instead, and the test split blamed).
    pub fn idx(images: &Path, labels: &Path, mut classes: Vec<String>) -> Result<Dataset> {
        let (dims, pixels) = read_idx(images, 0x0803)?;
        let (ldims, lab) = read_idx(labels, 0x0801)?;
        if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
            return Err(data_err(
                images,
                format!(
                    "image dims {dims:?} do not match the label dims {ldims:?} of {}",
                    labels.display()
                ),
            ));
        }
        let per_image = dims[1].checked_mul(dims[2]).map_or(u64::MAX, |p| p as u64);
        if per_image == 0 || per_image > crate::image::MAX_PIXELS {
            return Err(data_err(
                images,
                format!(
                    "images of {}x{} pixels: outside 1..={} pixels",
                    dims[1],
                    dims[2],
                    crate::image::MAX_PIXELS
                ),
            ));
        }
        if dims[0] == 0 {
            // Folders and list files without a sample are refused too (training stopped at "fewer
            // samples than one batch").
            return Err(data_err(images, "no images (the file's count is 0)"));
        }
        if classes.is_empty() {
            let max = lab.iter().copied().max().unwrap_or(0);
            classes = (0..=max).map(|l| l.to_string()).collect();
        } else if let Some(i) = lab.iter().position(|&l| usize::from(l) >= classes.len()) {
            return Err(data_err(
                labels,
                format!(
                    "label {} of sample {i} is past the {} classes ({}, ...): a classes.txt beside the IDX \
                     files names more",
                    lab[i],
                    classes.len(),
                    classes[0]
                ),
            ));
        }
        let items = lab
            .iter()
            .enumerate()
            .map(|(i, &l)| (Sample::Idx(i), i64::from(l)))
            .collect();
        let idx = IdxImages {
            rows: dims[1],
            cols: dims[2],
            pixels,
        };
        Ok(Dataset {
            classes,
            items,
            idx: Some(Arc::new(idx)),
            origin: images.to_path_buf(),
        })
    }

    /// Embedded default: Fashion-MNIST from Debian's package.
    pub fn fashion_mnist(split: Split) -> Result<Dataset> {
        let dir = fashion_mnist_dir();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "Fashion-MNIST is not installed: run `sudo apt-get install dataset-fashion-mnist` (or `make \
                     setup`), or point ALEXNET_FASHION_MNIST at its IDX files",
                ),
            });
        }
        Dataset::idx_folder(&dir, split)
    }
}

/// The IDX file of `split`'s `kind` (`images` or `labels`) in `dir`, gzipped or not.
pub(super) fn idx_path(dir: &Path, split: Split, kind: &str) -> Option<PathBuf> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let dims = if kind == "images" { 3 } else { 1 };
    let stem = format!("{prefix}-{kind}-idx{dims}-ubyte");
    [stem.clone(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The most bytes a gzipped IDX file may inflate to (Fashion-MNIST's largest: 47 MB).
const MAX_IDX_BYTES: u64 = 4 << 30;

/// Reads an unsigned-byte IDX file (gzipped or not): its dimensions and data.
pub fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = fs::read(path).map_err(io(path))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        // Every member (`cat a.gz b.gz`, bgzip: GzDecoder stopped after the first), up to a cap
        // (a small file can inflate past the memory).
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| data_err(path, format!("bad gzip data: {e}")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(data_err(
                path,
                format!("inflates past {} GiB, the limit of an IDX file", MAX_IDX_BYTES >> 30),
            ));
        }
        out
    } else {
        raw
    };
    if bytes.len() < 4 {
        return Err(data_err(path, "too short for an IDX header"));
    }
    let got = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if got != magic {
        return Err(data_err(
            path,
            format!("IDX magic {got:#06x}, expected {magic:#06x} (unsigned bytes)"),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(data_err(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    // Checked: wrapped, dims [4, 2^31, 2^31] passed as 0 bytes and indexing panicked later.
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| data_err(path, format!("IDX dims {dims:?} are too large")))?;
    if bytes.len().checked_sub(header) != Some(n) {
        return Err(data_err(
            path,
            format!(
                "IDX dims {dims:?} need {} data bytes, file has {}",
                n,
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}
