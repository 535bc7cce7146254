//! Walking an image folder: its image files, recursively, in a stable order, each read once
//! (symlinked folders followed, loops and second paths to a folder or file refused, or passed
//! over for prediction).
use super::source::{data_err, IMAGE_EXTENSIONS};
use crate::error::{io, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Whether `path`'s extension is one the decoder reads (case-insensitive).
pub(crate) fn is_image(path: &Path) -> bool {
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

/// [`image_files`] for images read once each and labelled by nobody (`alexnet predict DIR`): a
/// folder or file reached a second time through a symlink, or a loop, is passed over.
pub fn image_files_once(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut walk = Walk {
        pass_over_repeats: true,
        ..Walk::default()
    };
    walk.files(dir, &mut Vec::new(), &mut out)?;
    out.sort();
    Ok(out)
}

/// The folders read so far, by (device, inode) of their target; the image files too: regular
/// ones by id alone, symlinked ones with their path. A symlink to a file read already is refused
/// like a second path to a folder; two hard links are two files (a deduplicated dataset).
#[derive(Default)]
pub(super) struct Walk {
    pub(super) seen: std::collections::HashMap<(u64, u64), PathBuf>,
    files: std::collections::HashSet<(u64, u64)>,
    links: std::collections::HashMap<(u64, u64), PathBuf>,
    /// A second path to a folder or file is passed over, not an error.
    pass_over_repeats: bool,
}

impl Walk {
    pub(super) fn id(dir: &Path) -> Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(dir).map_err(io(dir))?;
        Ok((m.dev(), m.ino()))
    }

    /// Adds the image files under `dir` to `out`; `above` are the folders it lies in.
    pub(super) fn files(&mut self, dir: &Path, above: &mut Vec<(u64, u64)>, out: &mut Vec<PathBuf>) -> Result<()> {
        let id = Walk::id(dir)?;
        if self.pass_over_repeats && self.seen.contains_key(&id) {
            return Ok(());
        }
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
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            // Hidden entries (.ipynb_checkpoints/, macOS's ._x.jpg) are no one's samples.
            if path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".")) {
                continue;
            }
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => self.files(&path, above, out)?,
                Ok(m) if is_image(&path) => {
                    use std::os::unix::fs::MetadataExt;
                    let symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
                    match self.file((m.dev(), m.ino()), &path, symlink) {
                        Ok(()) => out.push(path),
                        Err(_) if self.pass_over_repeats => {}
                        Err(e) => return Err(e),
                    }
                }
                // A dangling symlink: its decoding names it.
                Err(_) if is_image(&path) => out.push(path),
                _ => {}
            }
        }
        above.pop();
        Ok(())
    }

    /// Notes image file `path` (`id` its target's), refusing a second path to it through a
    /// symlink.
    fn file(&mut self, id: (u64, u64), path: &Path, symlink: bool) -> Result<()> {
        let twice = |link: &Path, other: &Path| {
            data_err(
                link,
                format!(
                    "a symlink to the same file as {}: its image would be read twice",
                    other.display()
                ),
            )
        };
        if let Some(first) = self.links.get(&id) {
            return Err(if symlink {
                twice(path, first)
            } else {
                twice(first, path)
            });
        }
        if symlink {
            if self.files.contains(&id) {
                let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                return Err(twice(path, &target));
            }
            self.links.insert(id, path.to_path_buf());
        } else {
            self.files.insert(id);
        }
        Ok(())
    }
}
