//! Reads a PyTorch `state_dict` saved with `torch.save(model.state_dict(), "x.pth")`
//! without executing any pickle code: the zip format (PyTorch >= 1.6, below) and the
//! legacy format before it (legacy.rs).
//!
//! # The file format
//!
//! `torch.save` writes a zip archive whose entries all sit under one top folder
//! (the file's stem when it was written, e.g. `x/`):
//!
//! ```text
//! x/data.pkl              the pickled object (pickle protocol 2 by default)
//! x/byteorder             "little" (absent in files from PyTorch < 1.10)
//! x/data/0, x/data/1 ...  one entry per storage: its raw bytes, native byte order
//! x/version, x/.format_version, x/.storage_alignment, x/.data/serialization_id
//! ```
//!
//! Entries are STORED (not compressed); torch pads the local headers so the data
//! is 64-byte aligned, writes sizes and CRCs in the central directory only (data
//! descriptor flag), and always adds a zip64 end-of-central-directory record.
//!
//! In `data.pkl` every tensor is a call
//! `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
//! requires_grad, backward_hooks[, metadata])`, where `storage` comes from a
//! persistent id `('storage', torch.FloatStorage, '0', 'cpu', numel)` naming the
//! entry `data/0`. Parameters are wrapped in
//! `torch._utils._rebuild_parameter(tensor, requires_grad, backward_hooks)`, and a
//! module's state_dict is a `collections.OrderedDict` whose `_metadata` attribute
//! is set with BUILD.
//!
//! # Safety
//!
//! The pickle is run by a small interpreter that knows only the opcodes these files
//! need and resolves only a whitelist of globals (`Global`); any other global
//! (`os.system`, `builtins.eval`, ...) is refused when it is named, before
//! anything could call it. The interpreter's containers live in an arena
//! (values refer to them by index), so shared references, cycles and deep
//! nesting cost nothing and cannot overflow the stack. Every read is bounds-checked;
//! malformed input gives an `Err`, never a panic.

#![forbid(unsafe_code)]

mod legacy;
mod objects;
mod opcodes;
mod pickle;
mod zip;

use pickle::*;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use zip::*;

/// One tensor of a state_dict, as stored: the logical element at index
/// `[i0, i1, ...]` is at element `storage_offset + i0*strides[0] + i1*strides[1] + ...`
/// of `data` (element size [`Dtype::size`]).
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    pub strides: Vec<i64>,
    pub storage_offset: i64,
    /// The whole storage, little-endian; tensors that share a storage in the
    /// file share one `Arc`.
    pub data: Arc<Vec<u8>>,
    #[allow(dead_code)] // read by the tests; --init-from decides trainability itself
    pub requires_grad: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The dtype of a legacy typed-storage class `torch.<name>`, which torch
    /// still writes into persistent ids.
    fn from_storage_class(name: &str) -> Option<Dtype> {
        Some(match name {
            "FloatStorage" => Dtype::F32,
            "DoubleStorage" => Dtype::F64,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }
}

/// Reads the tensors of a `torch.save`d state_dict, in file order.
///
/// Errors name the file and what is wrong with it.
pub fn read_state_dict(path: &Path) -> Result<Vec<RawTensor>, String> {
    let file = File::open(path).map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    read_archive(file).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`read_state_dict`] on any seekable source; errors lack the file name.
fn read_archive<R: Read + Seek>(mut src: R) -> Result<Vec<RawTensor>, String> {
    let mut first = [0u8];
    let pickle = src.read_exact(&mut first).is_ok() && legacy::starts_a_pickle(first[0]);
    src.seek(SeekFrom::Start(0)).map_err(|e| format!("cannot seek: {e}"))?;
    if pickle {
        let mut file = Vec::new();
        src.read_to_end(&mut file).map_err(|e| format!("cannot read: {e}"))?;
        return legacy::read_legacy(&file);
    }
    let mut zip = Zip::open(src)?;

    // PyTorchStreamReader takes the archive name from the first entry.
    let first = zip.entries.first().ok_or("the zip archive is empty")?;
    let prefix = match first.name.split_once('/') {
        Some((p, _)) => p.to_string(),
        None => {
            return Err(format!(
                "not a torch.save archive (entry `{}` is not inside a top folder)",
                first.name
            ))
        }
    };
    let pkl_name = format!("{prefix}/data.pkl");
    if !zip.contains(&pkl_name) {
        if zip.contains(&format!("{prefix}/constants.pkl")) {
            return Err("a TorchScript archive (torch.jit.save), not a state_dict".into());
        }
        return Err(format!("not a torch.save archive (no `{pkl_name}`)"));
    }

    let byteorder_name = format!("{prefix}/byteorder");
    if zip.contains(&byteorder_name) {
        let order = zip.read(&byteorder_name)?;
        match order.trim_ascii() {
            b"little" => {}
            b"big" => {
                return Err(
                    "written on a big-endian machine (byteorder = big); only little-endian files are read".into(),
                )
            }
            other => return Err(format!("unknown byteorder `{}`", String::from_utf8_lossy(other))),
        }
    }

    let pkl = zip.read(&pkl_name)?;
    let mut load = |key: &str| zip.read(&format!("{prefix}/data/{key}"));
    unpickle_state_dict(&pkl, &mut load).map_err(|e| format!("{pkl_name}: {e}"))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pickle;
#[cfg(test)]
mod tests_zip;
