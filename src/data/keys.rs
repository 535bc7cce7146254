//! Keys of a dataset: [`Dataset::files_key`] (this machine's files, cheap: for caches and reuse)
//! and [`Dataset::fingerprint`] (the contents, for the ranks of a run on other machines).
use super::idx::idx_path;
use super::source::{Dataset, Sample, Split};
use std::fs;
use std::path::Path;

impl Dataset {
    /// A key of the samples on this machine: each one's file (or IDX index) and label, and each
    /// file's size and modification time (the IDX files' too), so that a file replaced, moved to
    /// another class, added or removed gives another key. Cheap: no file is read
    /// ([`Dataset::fingerprint`] keys the contents, for ranks on other machines).
    pub fn files_key(&self) -> u64 {
        use crate::files::{fnv, stamp, FNV_START};
        let mut h = stamp(fnv(FNV_START, self.origin.as_os_str().as_encoded_bytes()), &self.origin);
        if self.idx.is_some() {
            for split in [Split::Train, Split::Test] {
                for kind in ["images", "labels"] {
                    if let Some(p) = idx_path(&self.origin, split, kind) {
                        h = stamp(fnv(h, p.as_os_str().as_encoded_bytes()), &p);
                    }
                }
            }
        }
        for (sample, label) in &self.items {
            h = match sample {
                Sample::File(p) => stamp(fnv(h, p.as_os_str().as_encoded_bytes()), p),
                Sample::Idx(k) => fnv(h, &k.to_le_bytes()),
            };
            h = fnv(h, &label.to_le_bytes());
        }
        h
    }
}

/// Samples whose bytes [`Dataset::fingerprint`] reads (evenly spaced), and how many bytes of each.
const FINGERPRINT_SAMPLES: usize = 256;
const FINGERPRINT_BYTES: u64 = 4096;

impl Dataset {
    /// A fingerprint of what the dataset holds, for the ranks of a run to compare (their copies of
    /// the data may sit at other paths on other machines): its classes; every sample's label and
    /// path relative to the dataset (or IDX index); and the size and first 4 KiB of up to 256
    /// evenly spaced samples (the same files under other class folders: labels swapped). A file it
    /// cannot read counts as empty; reading it for training reports it.
    pub fn fingerprint(&self) -> u64 {
        use crate::files::{fnv, FNV_START};
        use std::io::Read;
        let base = if self.origin.is_dir() {
            self.origin.as_path()
        } else {
            self.origin.parent().unwrap_or(Path::new(""))
        };
        let mut h = self
            .classes
            .iter()
            .fold(FNV_START, |h, c| fnv(fnv(h, c.as_bytes()), &[0]));
        let every = self.items.len().div_ceil(FINGERPRINT_SAMPLES).max(1);
        for (i, (sample, label)) in self.items.iter().enumerate() {
            h = fnv(h, &label.to_le_bytes());
            let read = i % every == 0;
            h = match sample {
                Sample::File(p) => {
                    h = fnv(h, p.strip_prefix(base).unwrap_or(p).as_os_str().as_encoded_bytes());
                    let mut head = Vec::new();
                    if read {
                        if let Ok(f) = fs::File::open(p) {
                            let len = f.metadata().map_or(0, |m| m.len());
                            let _ = f.take(FINGERPRINT_BYTES).read_to_end(&mut head);
                            head.extend_from_slice(&len.to_le_bytes());
                        }
                    }
                    fnv(h, &head)
                }
                Sample::Idx(k) => match (&self.idx, read) {
                    (Some(images), true) => fnv(fnv(h, &k.to_le_bytes()), images.image(*k)),
                    _ => fnv(h, &k.to_le_bytes()),
                },
            };
        }
        h
    }
}
