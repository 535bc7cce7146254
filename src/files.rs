//! Crash-safe file writes: a file is replaced by writing `<name>.partial`, fsyncing it and renaming
//! it over the old one, so a process killed at any instruction leaves the old file or the new one,
//! never a truncated mix; a write that fails (a full disk) removes its partial file. Also: folders
//! created with an error that names a file in the way, and a run folder's one-writer lock.
use crate::error::{io, Error, Result};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Flushes a file (or a folder's entries) to the disk.
pub fn fsync(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

/// The temporary name `path` is written under before it is renamed into place.
pub fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through [`partial`], fsynced before the rename.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |part| fs::write(part, bytes).map_err(io(path)))
}

/// Replaces `path` by what `write` writes to the file it is given ([`partial`]), fsynced and
/// renamed into place: after a kill or a failure, `path` is the old file or the new one (and no
/// partial file is left after a failure). Errors name `path` (the partial file is gone by then),
/// and `write`'s should too.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let part = partial(path);
    let written = write(&part)
        .and_then(|()| fs::File::open(&part).and_then(|f| f.sync_all()).map_err(io(path)))
        .and_then(|()| crate::fault::point("file-partial").map_err(io(path)))
        .and_then(|()| fs::rename(&part, path).map_err(io(path)));
    if written.is_err() {
        let _ = fs::remove_file(&part);
    }
    // The rename itself made durable (a power loss could otherwise undo it).
    written.and_then(|()| fsync(parent_of(path)))
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates the folder `dir` and its parents (`mkdir -p`), each new one's entry fsynced in its
/// parent; where a part of the path is a file, the error names that file ("is a file, not a
/// folder") instead of the OS's bare "File exists".
pub fn create_dir(dir: &Path) -> Result<()> {
    let new: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.is_dir())
        .collect();
    fs::create_dir_all(dir).map_err(|e| in_the_way(dir, dir).unwrap_or_else(|| io(dir)(e)))?;
    new.iter().rev().try_for_each(|d| fsync(parent_of(d)))
}

/// Whether the file `out` can be written, checked before the work that makes it: a file name
/// (the message names `what` it holds and an `example` name), not a folder, with no file where
/// one of its folders should be.
pub fn check_file_target(out: &Path, what: &str, example: &str) -> Result<()> {
    if out.is_dir() || out.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Error::File {
            path: out.to_path_buf(),
            reason: format!("is a folder: give the {what} a file name, such as {example}"),
        });
    }
    match out.parent().and_then(|dir| in_the_way(dir, out)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The error for a file that stands where `dir` or one of its parents should be a folder, naming
/// that file and `needed_for` (the folder, or the file to be written in it); None if there is none.
pub fn in_the_way(dir: &Path, needed_for: &Path) -> Option<Error> {
    let file = dir
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir())?;
    Some(Error::File {
        path: file.to_path_buf(),
        reason: format!("is a file, not a folder (needed for {})", needed_for.display()),
    })
}

/// An exclusive hold on a run folder (`flock` on its `.lock` file) for as long as it lives: a
/// second process training into the folder (or recovering it) is refused instead of mixing its
/// metrics and checkpoints with the first's. The kernel lets go when the process ends, however
/// it ends (SIGKILL included), so a crash leaves no stale lock.
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    /// Takes `dir`'s lock (creating `dir`), or fails at once naming the folder if another process
    /// holds it. A file system without `flock` (some network mounts) gets a warning, no lock.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        create_dir(dir)?;
        let path = dir.join(".lock");
        match RunLock::flock(&path, libc::LOCK_EX | libc::LOCK_NB)? {
            Some(lock) => Ok(lock),
            None => Err(Error::Config(format!(
                "{} is being written by another training process (it holds {}): wait for it to end, or \
                 pick another --out",
                dir.display(),
                path.display()
            ))),
        }
    }

    /// Takes the lock file `path` (created), first waiting, with a message, for another process
    /// that holds it.
    pub fn wait(path: &Path) -> Result<RunLock> {
        if let Some(lock) = RunLock::flock(path, libc::LOCK_EX | libc::LOCK_NB)? {
            return Ok(lock);
        }
        crate::say::line(&format!(
            "  waiting for another process, which holds {}",
            path.display()
        ));
        RunLock::flock(path, libc::LOCK_EX)?
            .ok_or_else(|| Error::Internal(format!("{}: a blocking lock was refused", path.display())))
    }

    /// `flock(operation)` on `path` (created): None if another process holds it (non-blocking).
    fn flock(path: &Path, operation: libc::c_int) -> Result<Option<RunLock>> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(Some(RunLock { _file: file }));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => {
                    crate::say::line(&format!(
                        "warning: {}: cannot lock ({e}); another process could write this run at the same time",
                        path.display()
                    ));
                    return Ok(Some(RunLock { _file: file }));
                }
            }
        }
    }
}

/// The most bytes [`read_small_text`] reads.
pub const MAX_SMALL_TEXT: u64 = 16 << 20;

/// The text of a file that is small by nature (a settings file, a checkpoint's `state.json`):
/// one past [`MAX_SMALL_TEXT`] bytes is refused, not read until memory runs out (`--config
/// /dev/zero` was killed by the kernel's OOM killer).
pub fn read_small_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_SMALL_TEXT + 1).read_to_string(&mut text))
        .map_err(io(path))?;
    if text.len() as u64 > MAX_SMALL_TEXT {
        return Err(Error::File {
            path: path.to_path_buf(),
            reason: format!("is over {} MiB: not a settings or state file", MAX_SMALL_TEXT >> 20),
        });
    }
    Ok(text)
}

/// Refuses an output file `out` that would replace one of the command's inputs: one of the
/// `inputs` itself (a query image, a list file), or an image inside one of them that is a folder
/// (a dataset: a new image there would be read as a sample, as a run folder there would be).
pub fn check_not_input(out: &Path, inputs: &[&Path]) -> Result<()> {
    let o = resolved(out)?;
    let image = crate::data::is_image(&o);
    for input in inputs {
        let Ok(i) = input.canonicalize() else {
            continue; // a missing input is reported where it is read
        };
        let why = if o == i {
            "is an input of this command: writing there would replace it".to_string()
        } else if image && i.is_dir() && o.starts_with(&i) {
            format!(
                "is in the dataset {}: an image written there would be read as a sample",
                input.display()
            )
        } else {
            continue;
        };
        return Err(Error::Config(format!(
            "{} {why}; write the output elsewhere",
            out.display()
        )));
    }
    Ok(())
}

/// `path` made absolute: its nearest existing folder resolved (symlinks), then the rest of the
/// path with `.` and `..` applied (the rest does not exist yet, so it holds no symlink).
pub fn resolved(path: &Path) -> Result<PathBuf> {
    let existing = path
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .unwrap_or(Path::new("."));
    let mut out = existing.canonicalize().map_err(io(existing))?;
    for part in path.strip_prefix(existing).unwrap_or(path).components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// FNV-1a's starting value.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits, of `bytes` continuing from `h`: a key for file and folder names, stable
/// across builds and platforms (std's hashers promise neither).
pub fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `h` continued with `path`'s size and modification time (unchanged if it cannot be read): a
/// stamp that changes when the file is replaced or rewritten.
pub fn stamp(h: u64, path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) => {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            let nanos = modified.map_or(0, |d| d.as_nanos());
            fnv(fnv(h, &m.len().to_le_bytes()), &nanos.to_le_bytes())
        }
        Err(_) => h,
    }
}
