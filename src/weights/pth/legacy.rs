//! The legacy `torch.save` format: files from PyTorch < 1.6 (many published weights) and
//! `torch.save(..., _use_new_zipfile_serialization=False)`. Pickles and raw bytes follow
//! each other in a plain file (torch/serialization.py, `_legacy_save`):
//!
//! ```text
//! pickle   the magic number 0x1950a86a20f9469cfc6c
//! pickle   the protocol version, 1001
//! pickle   sys_info {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {...}}
//! pickle   the object; each storage is a persistent id
//!          ('storage', torch.FloatStorage, key, location, numel, None)
//! pickle   the list of storage keys, in the order their bytes follow
//! per key  numel as a little-endian int64, then numel elements' raw bytes (the element
//!          size of the storage type the object first names for that key)
//! ```
//!
//! The storages' bytes come after the pickle that needs them, so the object is unpickled
//! with deferred storages and they are attached once read. The whole file is read into
//! memory first and each storage copied out of it (a zip's entries are read one by one).

use super::objects::{kind, Obj, Value};
use super::opcodes::{FRAME, LONG1, PROTO, STOP};
use super::pickle::Unpickler;
use super::RawTensor;
use std::sync::Arc;

/// `pickle.dumps(0x1950a86a20f9469cfc6c)` after the PROTO (and FRAME) opcodes.
const MAGIC_PICKLE: [u8; 13] = [
    LONG1, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, STOP,
];
const PROTOCOL_VERSION: i64 = 1001;

/// Whether a file whose first byte is `first` is a pickle (a zip starts with `PK`).
pub(super) fn starts_a_pickle(first: u8) -> bool {
    first == PROTO
}

/// Reads the tensors of a legacy `torch.save`d state_dict held in `file`.
pub(super) fn read_legacy(file: &[u8]) -> Result<Vec<RawTensor>, String> {
    let mut pos = magic_end(file)
        .ok_or("a pickle, but not a torch.save file (it does not start with torch.save's magic number)")?;
    match run_at(file, &mut pos, "the protocol version")? {
        (_, Value::Int(PROTOCOL_VERSION)) => {}
        (_, Value::Int(v)) => return Err(format!("unsupported legacy torch.save protocol version {v}")),
        (_, other) => return Err(format!("the protocol version is a {}, not an int", kind(&other))),
    }
    let (info, sys_info) = run_at(file, &mut pos, "sys_info")?;
    if let Value::Dict(i) = sys_info {
        if let Some(Obj::Dict(items)) = info.objs.get(i) {
            let little = items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if &**s == "little_endian"));
            if let Some((_, Value::Bool(false))) = little {
                return Err(
                    "written on a big-endian machine (little_endian = False); only little-endian files are read".into(),
                );
            }
        }
    }
    let (mut main, top) = run_at(file, &mut pos, "the object")?;
    let (list, keys) = run_at(file, &mut pos, "the storage key list")?;
    let Value::List(i) = keys else {
        return Err(format!("the storage key list is a {}, not a list", kind(&keys)));
    };
    let Some(Obj::List(keys)) = list.objs.get(i) else {
        return Err("internal error: list".into());
    };
    for key in keys {
        let Value::Str(key) = key else {
            return Err(format!("the storage key list holds a {}", kind(key)));
        };
        let dtype = *main
            .storage_types
            .get(key)
            .ok_or_else(|| format!("the storage key list names `{key}`, which the pickle does not use"))?;
        let truncated = || format!("truncated (storage `{key}` at byte {pos} is cut off)");
        let count: [u8; 8] = file
            .get(pos..pos + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)?;
        let numel = i64::from_le_bytes(count);
        let nbytes = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| format!("storage `{key}` claims {numel} elements"))?;
        let data = (pos + 8)
            .checked_add(nbytes)
            .and_then(|end| file.get(pos + 8..end))
            .ok_or_else(truncated)?;
        pos += 8 + nbytes;
        main.loaded.insert(key.to_string(), Arc::new(data.to_vec()));
    }
    main.into_state_dict(top)
}

/// The offset after the magic-number pickle, if the file starts with one.
fn magic_end(file: &[u8]) -> Option<usize> {
    let mut p = 0;
    if file.first() == Some(&PROTO) {
        p += 2;
    }
    if file.get(p) == Some(&FRAME) {
        p += 9;
    }
    (file.get(p..p + MAGIC_PICKLE.len())? == MAGIC_PICKLE).then_some(p + MAGIC_PICKLE.len())
}

/// Runs the pickle at `*pos` and moves `*pos` past it.
fn run_at<'a>(file: &'a [u8], pos: &mut usize, what: &str) -> Result<(Unpickler<'a>, Value), String> {
    let start = *pos;
    let mut u = Unpickler::deferred(file.get(start..).unwrap_or_default());
    let value = u.run().map_err(|e| format!("{what} (pickle at byte {start}): {e}"))?;
    *pos = start + u.pos;
    Ok((u, value))
}
