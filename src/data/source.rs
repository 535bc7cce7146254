//! Where samples come from: an image folder (one subfolder per class), a list file of
//! `path label` lines (flat layouts such as ImageNet's validation set), or IDX files
//! (MNIST / Fashion-MNIST, gzipped or not). Every source yields `(sample, label)` pairs and the
//! class names; decoding happens later, in parallel (see `loader`).
use crate::error::{io, Error, Result};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Extensions the decoder reads (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm"];

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
/// The most classes a list file may label (a label is a class index).
pub const MAX_CLASSES: i64 = 1_000_000;

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The default dataset's folder: `$ALEXNET_FASHION_MNIST` if set, else [`FASHION_MNIST_DIR`].
pub fn fashion_mnist_dir() -> PathBuf {
    std::env::var_os("ALEXNET_FASHION_MNIST").map_or_else(|| PathBuf::from(FASHION_MNIST_DIR), PathBuf::from)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl std::str::FromStr for Split {
    type Err = Error;
    /// `train`, or `test` (also `val`: an image folder's `val/` is its test split).
    fn from_str(s: &str) -> Result<Split> {
        match s {
            "train" => Ok(Split::Train),
            "test" | "val" => Ok(Split::Test),
            _ => Err(Error::Config(format!("split must be train or test, got `{s}`"))),
        }
    }
}

/// One sample, not yet decoded.
#[derive(Clone, Debug)]
pub enum Sample {
    File(PathBuf),
    /// Index into the dataset's IDX image block.
    Idx(usize),
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

#[derive(Clone, Debug)]
pub struct Dataset {
    /// Class names; labels index into this.
    pub classes: Vec<String>,
    pub items: Vec<(Sample, i64)>,
    pub idx: Option<Arc<IdxImages>>,
    /// What was opened (for messages).
    pub origin: PathBuf,
}

fn data_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Image files under `dir`, recursively, sorted (a stable order whatever the file system).
/// Symlinked folders are followed once: a loop, or a second path to a folder already read, is
/// an error (its images would be read again, under another label).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    Walk::default().files(dir, &mut Vec::new(), &mut out)?;
    out.sort();
    Ok(out)
}

/// The folders read so far, by (device, inode) of their target.
#[derive(Default)]
struct Walk {
    seen: std::collections::HashMap<(u64, u64), PathBuf>,
}

impl Walk {
    fn id(dir: &Path) -> Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(dir).map_err(io(dir))?;
        Ok((m.dev(), m.ino()))
    }

    /// Adds the image files under `dir` to `out`; `above` are the folders it lies in.
    fn files(&mut self, dir: &Path, above: &mut Vec<(u64, u64)>, out: &mut Vec<PathBuf>) -> Result<()> {
        let id = Walk::id(dir)?;
        if let Some(first) = self.seen.get(&id) {
            let reason = if above.contains(&id) {
                format!("a symlink loop: this folder leads back to {}", first.display())
            } else {
                format!(
                    "the folder {} is reached twice (through a symlink): its images would be read twice",
                    first.display()
                )
            };
            return Err(data_err(dir, reason));
        }
        self.seen.insert(id, dir.to_path_buf());
        above.push(id);
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            // Hidden entries (.ipynb_checkpoints/, macOS's ._x.jpg) are no one's samples.
            if path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".")) {
                continue;
            }
            if path.is_dir() {
                self.files(&path, above, out)?;
            } else if is_image(&path) {
                out.push(path);
            }
        }
        above.pop();
        Ok(())
    }
}

impl Dataset {
    /// Opens `path`: a folder holding IDX files (`<split>-images-idx3-ubyte[.gz]` with Fashion-MNIST's
    /// `train`/`t10k` names), a list file (`.txt`/`.csv`), or an image folder. For an image folder
    /// with `train/` and `val/` (or `test/`) subfolders, `split` picks one.
    pub fn open(path: &Path, split: Split) -> Result<Dataset> {
        if path.is_file() {
            return Dataset::list_file(path);
        }
        if !path.is_dir() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        if idx_path(path, split, "images").is_some() {
            return Dataset::idx_folder(path, split);
        }
        let (wanted, others): (&[&str], &[&str]) = match split {
            Split::Train => (&["train"], &["val", "test"]),
            Split::Test => (&["val", "test"], &["train"]),
        };
        if let Some(s) = wanted.iter().find(|s| path.join(s).is_dir()) {
            return Dataset::image_folder(&path.join(s));
        }
        // With a folder of the other split, this one is missing (not the root's subfolders).
        if let Some(other) = others.iter().find(|s| path.join(s).is_dir()) {
            let wanted: Vec<String> = wanted.iter().map(|s| format!("{s}/")).collect();
            let name = if split == Split::Train { "training" } else { "test" };
            return Err(data_err(
                path,
                format!(
                    "has {other}/ but no {} folder for the {name} split",
                    wanted.join(" or ")
                ),
            ));
        }
        Dataset::image_folder(path)
    }

    /// Whether `path` holds a test split of its own (IDX test files, or a val/ or test/ folder
    /// beside train/); otherwise [`Dataset::open`] gives the training images for both splits.
    pub fn has_test_split(path: &Path) -> bool {
        path.is_dir()
            && (idx_path(path, Split::Test, "images").is_some()
                || ["val", "test"].iter().any(|s| path.join(s).is_dir()))
    }

    /// One subfolder per class (sorted names = labels 0..), images anywhere below each.
    pub fn image_folder(root: &Path) -> Result<Dataset> {
        let mut classes: Vec<String> = fs::read_dir(root)
            .map_err(io(root))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.')) // .ipynb_checkpoints, .git: not classes
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(data_err(root, "no class subfolders (expected one folder per class)"));
        }
        let mut items = Vec::new();
        let mut walk = Walk::default();
        let mut above = vec![Walk::id(root)?];
        walk.seen.insert(above[0], root.to_path_buf());
        for (label, class) in classes.iter().enumerate() {
            let mut files = Vec::new();
            walk.files(&root.join(class), &mut above, &mut files)?;
            if files.is_empty() {
                // A class no image can teach (torchvision's ImageFolder refuses it too).
                return Err(data_err(
                    &root.join(class),
                    "a class folder with no image files (add images or remove the folder)",
                ));
            }
            files.sort();
            items.extend(files.into_iter().map(|f| (Sample::File(f), label as i64)));
        }
        if items.is_empty() {
            return Err(data_err(root, "no image files in the class folders"));
        }
        Ok(Dataset {
            classes,
            items,
            idx: None,
            origin: root.to_path_buf(),
        })
    }

    /// Lines `relative/or/absolute/path label` (space, tab or comma separated; `#` comments).
    /// Paths are relative to the list's folder. Class names come from a `classes.txt` beside the
    /// list (one per line) when present, else are the label numbers. Labels are below
    /// [`MAX_CLASSES`].
    pub fn list_file(list: &Path) -> Result<Dataset> {
        let text = fs::read_to_string(list).map_err(io(list))?;
        let base = list.parent().unwrap_or(Path::new("."));
        let mut items = Vec::new();
        // A UTF-8 byte order mark (Windows editors) is not part of the first path.
        for (n, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, label) = line
                .rsplit_once([' ', '\t', ','])
                .ok_or_else(|| data_err(list, format!("line {}: expected `path label`, got `{line}`", n + 1)))?;
            let label: i64 = label.trim().parse().map_err(|_| {
                data_err(
                    list,
                    format!("line {}: label `{}` is not a non-negative integer", n + 1, label.trim()),
                )
            })?;
            if label < 0 {
                return Err(data_err(list, format!("line {}: negative label {label}", n + 1)));
            }
            // Labels name classes 0..=max: a huge one would allocate that many class names.
            if label >= MAX_CLASSES {
                return Err(data_err(
                    list,
                    format!(
                        "line {}: label {label} is over the limit of {} classes",
                        n + 1,
                        MAX_CLASSES
                    ),
                ));
            }
            items.push((Sample::File(base.join(path.trim())), label));
        }
        if items.is_empty() {
            return Err(data_err(list, "no samples listed"));
        }
        let max = items.iter().map(|(_, l)| *l).max().unwrap_or(0);
        let names = base.join("classes.txt");
        let classes = if names.is_file() {
            let text = fs::read_to_string(&names).map_err(io(&names))?;
            // One name per line (line n names label n - 1); blank lines at the end are not classes.
            let c: Vec<String> = text
                .trim_start_matches('\u{feff}')
                .trim_end()
                .lines()
                .map(|l| l.trim().to_string())
                .collect();
            let mut seen = std::collections::HashMap::new();
            for (n, name) in c.iter().enumerate() {
                if name.is_empty() {
                    return Err(data_err(&names, format!("line {}: an empty class name", n + 1)));
                }
                if let Some(first) = seen.insert(name.as_str(), n) {
                    return Err(data_err(
                        &names,
                        format!(
                            "line {}: class `{name}` is named twice (first on line {})",
                            n + 1,
                            first + 1
                        ),
                    ));
                }
            }
            if (c.len() as i64) <= max {
                return Err(data_err(
                    &names,
                    format!("{} class names, but the list uses label {max}", c.len()),
                ));
            }
            c
        } else {
            (0..=max).map(|l| l.to_string()).collect()
        };
        Ok(Dataset {
            classes,
            items,
            idx: None,
            origin: list.to_path_buf(),
        })
    }

    /// Fashion-MNIST-style IDX files in `dir` (`train-…` or `t10k-…`, gzipped or not).
    pub fn idx_folder(dir: &Path, split: Split) -> Result<Dataset> {
        let images = idx_path(dir, split, "images")
            .ok_or_else(|| data_err(dir, "no <train|t10k>-images-idx3-ubyte[.gz] file here"))?;
        let labels = idx_path(dir, split, "labels")
            .ok_or_else(|| data_err(dir, "no <train|t10k>-labels-idx1-ubyte[.gz] file here"))?;
        let classes: Vec<String> = FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect();
        Dataset::idx(&images, &labels, classes)
    }

    pub fn idx(images: &Path, labels: &Path, mut classes: Vec<String>) -> Result<Dataset> {
        let (dims, pixels) = read_idx(images, 0x0803)?;
        let (ldims, lab) = read_idx(labels, 0x0801)?;
        if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
            return Err(data_err(
                images,
                format!("image dims {dims:?} do not match label dims {ldims:?}"),
            ));
        }
        let max = lab.iter().copied().max().unwrap_or(0) as usize;
        if max >= classes.len() {
            classes = (0..=max).map(|l| l.to_string()).collect();
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

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Keeps the first `n` samples of a deterministic shuffle (seeded), for small runs.
    pub fn subset(mut self, n: usize, seed: u64) -> Dataset {
        if n < self.items.len() {
            let order = crate::data::rng::permutation(self.items.len(), seed);
            let mut keep: Vec<usize> = order[..n].to_vec();
            keep.sort_unstable();
            self.items = keep.into_iter().map(|i| self.items[i].clone()).collect();
        }
        self
    }

    /// This split labelled by `classes` (the training split's, or a checkpoint's): each class
    /// takes the label of the class of the same name there, so a test split that lacks a class
    /// is still labelled right. A class that `classes` does not have is an error naming it.
    /// Classes named by their label numbers (a list file without `classes.txt`) keep them.
    pub fn labelled_as(mut self, classes: &[String]) -> Result<Dataset> {
        let numbered = self.classes.iter().enumerate().all(|(i, c)| *c == i.to_string());
        if self.classes == classes || (numbered && self.classes.len() <= classes.len()) {
            self.classes = classes.to_vec();
            return Ok(self);
        }
        let unknown = |c: &str| {
            data_err(
                &self.origin,
                format!(
                    "class `{c}` is not one of the training classes ({})",
                    classes.join(", ")
                ),
            )
        };
        let label: Vec<i64> = self
            .classes
            .iter()
            .map(|c| {
                classes
                    .iter()
                    .position(|k| k == c)
                    .map(|p| p as i64)
                    .ok_or_else(|| unknown(c))
            })
            .collect::<Result<_>>()?;
        for (_, l) in &mut self.items {
            *l = *label
                .get(*l as usize)
                .ok_or_else(|| data_err(&self.origin, format!("label {l} has no class name")))?;
        }
        self.classes = classes.to_vec();
        Ok(self)
    }

    /// The class names as JSON (`{"classes": [...]}`), saved beside runs.
    pub fn classes_json(&self) -> String {
        format!("{{\"classes\": {}}}\n", serde_json::Value::from(self.classes.clone()))
    }
}

fn idx_path(dir: &Path, split: Split, kind: &str) -> Option<PathBuf> {
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

/// Reads an unsigned-byte IDX file (gzipped or not): its dimensions and data.
pub fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = fs::read(path).map_err(io(path))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| data_err(path, format!("bad gzip data: {e}")))?;
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
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
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
