//! Where samples come from: an image folder (one subfolder per class), a list file of
//! `path label` lines (flat layouts such as ImageNet's validation set), or IDX files
//! (MNIST / Fashion-MNIST, gzipped or not; read in `idx`). Every source yields
//! `(sample, label)` pairs and the class names; decoding happens later, in parallel (see
//! `loader`).
use super::idx::{idx_path, IdxImages};
use super::walk::Walk;
pub use super::walk::{image_files, image_files_once};
use crate::error::{io, Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Extensions the decoder reads (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "bmp", "gif", "tif", "tiff", "webp", "pbm", "pgm", "ppm", "pnm", "pam",
];

/// The subfolders of an image folder that hold its test split (beside `train/`).
const TEST_FOLDERS: [&str; 2] = ["val", "test"];

pub use crate::config::MAX_CLASSES;

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

#[derive(Clone, Debug)]
pub struct Dataset {
    /// Class names; labels index into this.
    pub classes: Vec<String>,
    pub items: Vec<(Sample, i64)>,
    pub idx: Option<Arc<IdxImages>>,
    /// What was opened (for messages).
    pub origin: PathBuf,
}

pub(super) fn data_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An image folder's classes, sorted: (class name, folder name); a name that is not UTF-8 is
/// read by its own bytes.
fn class_folders(root: &Path) -> Result<Vec<(String, std::ffi::OsString)>> {
    let mut folders: Vec<(String, std::ffi::OsString)> = fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.file_name()))
        .filter(|(name, _)| !name.starts_with('.')) // .ipynb_checkpoints, .git: not classes
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(data_err(root, "no class subfolders (expected one folder per class)"));
    }
    if let Some(w) = folders.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(data_err(
            root,
            format!(
                "the class folders {:?} and {:?} have one name as text, `{}` (not UTF-8): rename one",
                w[0].1, w[1].1, w[0].0
            ),
        ));
    }
    Ok(folders)
}

/// Whether the image folder `path` is split into `train/` and `val/` or `test/` rather than one
/// folder per class. Its other folders without images (`annotations/`, an unzipped `__MACOSX/`)
/// are not classes; split folders beside class folders holding images are an error naming both: a
/// class called `train` was taken for the training split, the other classes left out in silence.
fn is_split(path: &Path) -> Result<bool> {
    let folders = class_folders(path).unwrap_or_default();
    let (splits, others): (Vec<&str>, Vec<&str>) = folders
        .iter()
        .map(|(name, _)| name.as_str())
        .partition(|name| *name == "train" || TEST_FOLDERS.contains(name));
    let classes: Vec<&str> = match splits.is_empty() {
        true => return Ok(false),
        false => others.into_iter().filter(|n| holds_images(&path.join(n))).collect(),
    };
    if classes.is_empty() {
        return Ok(true);
    }
    let list = |names: &[&str]| {
        let mut shown: Vec<String> = names.iter().take(5).map(|n| format!("{n}/")).collect();
        if names.len() > 5 {
            shown.push(format!("and {} more", names.len() - 5));
        }
        shown.join(", ")
    };
    Err(data_err(
        path,
        format!(
            "has {} beside the class folders {}: either split folders (train/ and val/ or test/, one \
             folder per class in each) or one folder per class, not both (rename a class named like a split)",
            list(&splits),
            list(&classes)
        ),
    ))
}

/// Whether `dir` holds an image file at any depth (hidden entries skipped, as a class's are;
/// symbolic links below it not followed).
fn holds_images(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) if super::walk::is_image(&e.path()) => return true,
                _ => {}
            }
        }
    }
    false
}

impl Dataset {
    /// Opens `path`: a folder holding IDX files (`<split>-images-idx3-ubyte[.gz]` with Fashion-MNIST's
    /// `train`/`t10k` names), a list file (`.txt`/`.csv`), or an image folder. For an image folder
    /// with `train/` and `val/` (or `test/`) subfolders, `split` picks one (labelled by its own
    /// folders: see [`Dataset::training_classes`] and [`Dataset::labelled_as`]).
    pub fn open(path: &Path, split: Split) -> Result<Dataset> {
        if path.is_file() {
            return Dataset::list_file(path);
        }
        if path.exists() && !path.is_dir() {
            return Err(data_err(
                path,
                "is neither a file nor a folder (a device, a FIFO or a socket)",
            ));
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
        // IDX files of the other split only: training files serve as the test split too (as an
        // image folder without val/ does); test files alone are no training split.
        if split == Split::Test && idx_path(path, Split::Train, "images").is_some() {
            return Dataset::idx_folder(path, Split::Train);
        }
        if split == Split::Train && idx_path(path, Split::Test, "images").is_some() {
            return Err(data_err(
                path,
                "has t10k-* IDX files but no train-images-idx3-ubyte[.gz] (and train-labels-idx1-ubyte[.gz]) \
                 for the training split",
            ));
        }
        if !is_split(path)? {
            return Dataset::image_folder(path);
        }
        let (wanted, others): (&[&str], &[&str]) = match split {
            Split::Train => (&["train"], &TEST_FOLDERS),
            Split::Test => (&TEST_FOLDERS, &["train"]),
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
        Dataset::image_folder(path) // gone since is_split looked
    }

    /// The class names of `path`'s `train/` when `path` is an image folder with `train/` beside a
    /// `val/` or `test/`: what its test split is labelled by when no other names are given
    /// (its own folders' order mislabels a class `val/` lacks).
    pub fn training_classes(path: &Path) -> Option<Vec<String>> {
        let has_test = TEST_FOLDERS.iter().any(|s| path.join(s).is_dir()) && matches!(is_split(path), Ok(true));
        let folders = class_folders(&path.join("train")).ok().filter(|_| has_test)?;
        Some(folders.into_iter().map(|(name, _)| name).collect())
    }

    /// What `path` lacks for a test split of its own (IDX test files, or a val/ or test/ folder
    /// beside train/), or `None` when it has one; without one [`Dataset::open`] gives the
    /// training images for both splits.
    pub fn missing_test_split(path: &Path) -> Option<&'static str> {
        if path.is_file() {
            Some("a list file is one split")
        } else if idx_path(path, Split::Test, "images").is_some() || TEST_FOLDERS.iter().any(|s| path.join(s).is_dir())
        {
            None
        } else if idx_path(path, Split::Train, "images").is_some() {
            Some("t10k-* IDX files beside the train-* ones")
        } else {
            Some("a val/ or test/ folder beside train/")
        }
    }

    /// The warnings about this dataset, opened as the `split` of `path`: the test split's
    /// ([`Dataset::test_split_warning`]), and image files beside an image folder's class folders,
    /// which no class holds and which are not read (as torchvision's ImageFolder leaves them).
    /// Said by `alexnet train`/`eval` and Python's `DataLoader` alike.
    pub fn warnings(&self, path: &Path, split: Split) -> Vec<String> {
        let mut out: Vec<String> = Dataset::test_split_warning(path, split).into_iter().collect();
        // The test split of a folder without one is the training split again: said once.
        let own = split == Split::Train || Dataset::missing_test_split(path).is_none();
        if own && self.idx.is_none() && self.origin.is_dir() {
            let loose = fs::read_dir(&self.origin)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    !e.file_name().to_string_lossy().starts_with('.')
                        && e.file_type().is_ok_and(|t| t.is_file())
                        && super::walk::is_image(&e.path())
                })
                .count();
            if loose > 0 {
                out.push(format!(
                    "{}: {loose} image file(s) lie beside the class folders, in no class: they are not read \
                     (move each into its class's folder)",
                    self.origin.display()
                ));
            }
        }
        out
    }

    /// The warning for the test split of `path` when it may not be the one the user means: the
    /// training images (no test split of its own), or val/ where test/ is there too.
    fn test_split_warning(path: &Path, split: Split) -> Option<String> {
        if split != Split::Test {
            return None;
        }
        if let Some(missing) = Dataset::missing_test_split(path) {
            return Some(format!(
                "{} has no test split ({missing}): its training images serve as the test split",
                path.display()
            ));
        }
        let [first, second] = TEST_FOLDERS;
        let idx = [Split::Train, Split::Test]
            .iter()
            .any(|&s| idx_path(path, s, "images").is_some());
        (!idx && path.join(first).is_dir() && path.join(second).is_dir()).then(|| {
            format!(
                "{} has both {first}/ and {second}/: {first}/ is the test split ({second}/ is not read)",
                path.display()
            )
        })
    }

    /// One subfolder per class (sorted names = labels 0..), images anywhere below each.
    pub fn image_folder(root: &Path) -> Result<Dataset> {
        let folders = class_folders(root)?;
        let classes: Vec<String> = folders.iter().map(|(name, _)| name.clone()).collect();
        let mut items = Vec::new();
        let mut walk = Walk::default();
        let mut above = vec![Walk::id(root)?];
        walk.seen.insert(above[0], root.to_path_buf());
        for (label, (_, folder)) in folders.iter().enumerate() {
            let mut files = Vec::new();
            walk.files(&root.join(folder), &mut above, &mut files)?;
            if files.is_empty() {
                // A class no image can teach (torchvision's ImageFolder refuses it too).
                return Err(data_err(
                    &root.join(folder),
                    format!(
                        "a class folder with no image files (files named .{}; add images or remove the folder)",
                        IMAGE_EXTENSIONS.join(", .")
                    ),
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
    /// Classes named by their label numbers (a list file without `classes.txt`) keep them, unless
    /// `classes` has those names too (class folders named by numbers, sorted as names: 0, 1, 10,
    /// 2, ...): then they are matched by name as well.
    pub fn labelled_as(mut self, classes: &[String]) -> Result<Dataset> {
        let numbered = self.classes.iter().enumerate().all(|(i, c)| *c == i.to_string());
        let by_number =
            numbered && self.classes.len() <= classes.len() && !self.classes.iter().all(|c| classes.contains(c));
        if self.classes == classes || by_number {
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

/// The first bad name of class names in label order: `(i, None)` when name `i` is empty,
/// `(i, Some(j))` when it repeats name `j`.
pub fn bad_class_name(classes: &[String]) -> Option<(usize, Option<usize>)> {
    let mut seen = std::collections::HashMap::new();
    for (i, name) in classes.iter().enumerate() {
        if name.is_empty() {
            return Some((i, None));
        }
        if let Some(first) = seen.insert(name.as_str(), i) {
            return Some((i, Some(first)));
        }
    }
    None
}

/// `classes` given as a list (Python's `classes=`, a checkpoint's names): each name once, none
/// empty.
pub fn check_class_names(classes: &[String]) -> Result<()> {
    match bad_class_name(classes) {
        None => Ok(()),
        Some((i, None)) => Err(Error::Config(format!("classes[{i}] is an empty class name"))),
        Some((i, Some(first))) => Err(Error::Config(format!(
            "classes lists `{}` twice (classes[{first}] and classes[{i}])",
            classes[i]
        ))),
    }
}

/// The class names of a list file or an IDX folder whose largest label is `max`: `names` (a
/// `classes.txt`, line n naming label n - 1) when it exists, else the label numbers.
pub(super) fn class_names(names: &Path, max: i64) -> Result<Vec<String>> {
    if !names.is_file() {
        return Ok((0..=max).map(|l| l.to_string()).collect());
    }
    let text = fs::read_to_string(names).map_err(io(names))?;
    // One name per line (line n names label n - 1); blank lines at the end are not classes.
    let c: Vec<String> = text
        .trim_start_matches('\u{feff}')
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    match bad_class_name(&c) {
        Some((n, None)) => return Err(data_err(names, format!("line {}: an empty class name", n + 1))),
        Some((n, Some(first))) => {
            return Err(data_err(
                names,
                format!(
                    "line {}: class `{}` is named twice (first on line {})",
                    n + 1,
                    c[n],
                    first + 1
                ),
            ))
        }
        None => {}
    }
    if (c.len() as i64) <= max {
        return Err(data_err(
            names,
            format!("{} class names, but the data uses label {max}", c.len()),
        ));
    }
    Ok(c)
}
