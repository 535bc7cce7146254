//! Weights from files, for `alexnet train --init-from`: an `alexnet` run or checkpoint folder,
//! a safetensors file, or a PyTorch `state_dict` written by `torch.save` (`.pth`, `.pt`, `.bin`),
//! the last read by our own restricted reader (`pth/`), which executes no pickle code.
mod pth;

use crate::config::Config;
use crate::error::{Error, Result};
use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// The named tensors of `path` (on the CPU, as stored; a `.pth`'s are views of its storages, some
/// perhaps broadcast: copy out what is kept, once its shape is checked), and for a run or
/// checkpoint folder the network it was trained as.
pub fn read(path: &Path) -> Result<(BTreeMap<String, Tensor>, Option<Config>)> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        });
    }
    if path.is_dir() {
        let c = crate::checkpoint::load_weights(path)?;
        let trained = c.state.config.model_config(c.state.classes.len() as i64).ok();
        return Ok((c.weights, trained));
    }
    // Its momentum buffers have the weights' names and shapes: taken as weights, a run started
    // from values near 1e-5.
    if path.file_name().is_some_and(|n| n == "optimizer.safetensors") {
        return Err(Error::Config(format!(
            "{}: a checkpoint's optimizer state (momentum), not weights: give the checkpoint folder or its \
             weights.safetensors",
            path.display()
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let tensors = match ext.as_str() {
        "safetensors" => crate::checkpoint::read_tensors(path),
        "pth" | "pt" | "bin" => {
            // One tensor per storage, the state_dict's tensors views of it (as torch.load gives):
            // a copy per view held the whole storage once per tensor, and a broadcast (stride 0)
            // made contiguous could ask for terabytes from a file of a few bytes. Callers copy
            // out what they use, of the shapes they expect.
            let mut storages: HashMap<*const Vec<u8>, Tensor> = HashMap::new();
            pth::read_state_dict(path)
                .map_err(Error::Config)?
                .into_iter()
                .map(|t| {
                    let view = to_tensor(&t, &mut storages)
                        .map_err(|why| Error::Config(format!("{}: tensor `{}`: {why}", path.display(), t.name)))?;
                    Ok((t.name, view))
                })
                .collect()
        }
        _ => Err(Error::Config(format!(
            "{}: expected an alexnet run or checkpoint folder, a .safetensors file or a PyTorch \
             state_dict (.pth, .pt, .bin)",
            path.display()
        ))),
    };
    Ok((tensors?, None))
}

/// How the network `trained` computes otherwise than `cfg` (`paper` and `caffe`, or a network
/// and its ablation, share every weight shape), by the settings that say so; empty if alike.
fn other_network(trained: &Config, cfg: &Config) -> Vec<String> {
    let lrn = |c: &Config| {
        if c.convs.iter().any(|l| l.lrn) {
            "with LRN"
        } else {
            "without LRN"
        }
    };
    let mut why = Vec::new();
    if trained.preset != cfg.preset {
        why.push(format!("the {} preset, not {}", trained.preset, cfg.preset));
    }
    if trained.activation != cfg.activation {
        why.push(format!(
            "activation {}, not {}",
            trained.activation.name(),
            cfg.activation.name()
        ));
    }
    if lrn(trained) != lrn(cfg) {
        why.push(format!("{}, not {}", lrn(trained), lrn(cfg)));
    }
    if trained.pool.kernel != cfg.pool.kernel {
        why.push(format!("pool kernel {}, not {}", trained.pool.kernel, cfg.pool.kernel));
    }
    why
}

/// A tensor of the pickle reader: a view of its storage (made once per storage, in `storages`)
/// with its shape, strides and offset.
fn to_tensor(
    t: &pth::RawTensor,
    storages: &mut HashMap<*const Vec<u8>, Tensor>,
) -> std::result::Result<Tensor, String> {
    use pth::Dtype;
    let (kind, size) = match t.dtype {
        Dtype::F32 => (Kind::Float, 4),
        Dtype::F64 => (Kind::Double, 8),
        Dtype::F16 => (Kind::Half, 2),
        Dtype::BF16 => (Kind::BFloat16, 2),
        Dtype::I64 => (Kind::Int64, 8),
        Dtype::I32 => (Kind::Int, 4),
        Dtype::I16 => (Kind::Int16, 2),
        Dtype::I8 => (Kind::Int8, 1),
        Dtype::U8 => (Kind::Uint8, 1),
        Dtype::Bool => (Kind::Bool, 1),
    };
    let bad = |what: &str| what.to_string();
    let torch = |e: tch::TchError| crate::error::clean_torch_message(&e.to_string());
    if t.shape.iter().chain(&t.strides).any(|&v| v < 0) {
        return Err(bad("negative size or stride"));
    }
    if t.shape.contains(&0) {
        return Tensor::f_empty(t.shape.as_slice(), (kind, tch::Device::Cpu)).map_err(torch);
    }
    // The furthest element the view reaches must lie inside the storage.
    let mut last = t.storage_offset;
    for (&n, &s) in t.shape.iter().zip(&t.strides) {
        last = (n - 1)
            .checked_mul(s)
            .and_then(|span| last.checked_add(span))
            .ok_or_else(|| bad("view reaches past its storage (damaged file)"))?;
    }
    let elements = (t.data.len() / size) as i64;
    if t.storage_offset < 0 || last >= elements {
        return Err(bad("view reaches past its storage (damaged file)"));
    }
    let storage = match storages.entry(std::sync::Arc::as_ptr(&t.data)) {
        Entry::Occupied(e) => e.get().shallow_clone(),
        Entry::Vacant(e) => e
            .insert(Tensor::f_from_data_size(&t.data, &[elements], kind).map_err(torch)?)
            .shallow_clone(),
    };
    storage
        .f_as_strided(t.shape.as_slice(), t.strides.as_slice(), t.storage_offset)
        .map_err(torch)
}

/// Replaces the freshly initialised `whole` parameters of `cfg` by those of `path`, by name. A
/// class layer of another number of classes (its weight's rows; its bias must agree) keeps its
/// fresh initialisation, weight and bias (with a warning; the result is then true); any other
/// missing, misshapen or non-floating-point tensor is an error naming it.
pub fn init_from(cfg: &Config, whole: &mut BTreeMap<String, Tensor>, path: &Path) -> Result<bool> {
    let (loaded, trained) = read(path)?;
    let class = &cfg.fcs[cfg.fcs.len() - 1].name;
    let culprit = |msg: String| Error::Config(format!("--init-from {}: {msg}", path.display()));
    // The class layer is new when the file's weight has other rows (classes) of the same inputs.
    let head_weight = format!("{class}.weight");
    let rows = match (loaded.get(&head_weight), whole.get(&head_weight)) {
        (Some(w), Some(fresh))
            if w.dim() == 2 && w.size()[0] != fresh.size()[0] && w.size()[1..] == fresh.size()[1..] =>
        {
            Some(w.size()[0])
        }
        _ => None,
    };
    for (name, fresh) in whole.iter_mut() {
        let Some(w) = loaded.get(name) else {
            let have: Vec<&str> = loaded.keys().take(6).map(String::as_str).collect();
            return Err(culprit(format!(
                "no tensor `{name}` (the {} network's); it holds {} tensors: {}{}",
                cfg.preset,
                loaded.len(),
                have.join(", "),
                if loaded.len() > have.len() { ", ..." } else { "" }
            )));
        };
        if !w.is_floating_point() {
            return Err(culprit(format!(
                "`{name}` holds {} values, not floating-point weights",
                format!("{:?}", w.kind()).to_lowercase()
            )));
        }
        if let Some(rows) = rows.filter(|_| name.starts_with(&format!("{class}."))) {
            // The whole layer keeps its fresh values: a bias for other classes than the weight's
            // says the file is not what it seems.
            if w.size().first() != Some(&rows) || w.size()[1..] != fresh.size()[1..] {
                return Err(culprit(format!(
                    "`{name}` has shape {:?}, yet `{head_weight}` has {rows} rows",
                    w.size()
                )));
            }
        } else if w.size() == fresh.size() {
            let w = w.f_to_kind(Kind::Float)?.f_contiguous()?.copy();
            // NaN weights would train to a NaN loss, blamed on the learning rate.
            if w.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
                return Err(culprit(format!("`{name}` holds NaN or infinite values")));
            }
            *fresh = w;
        } else {
            return Err(culprit(format!(
                "`{name}` has shape {:?}, this network's is {:?}",
                w.size(),
                fresh.size()
            )));
        }
    }
    // Fine-tuning starts from another network's weights at times, but rarely by mistake.
    let other = trained.map(|t| other_network(&t, cfg)).unwrap_or_default();
    if !other.is_empty() {
        crate::say::note(&format!(
            "warning: --init-from {}: trained as another network ({}): its weights have this one's shapes \
             and are loaded, but were learned for that network",
            path.display(),
            other.join("; ")
        ));
    }
    if let Some(rows) = rows {
        crate::say::note(&format!(
            "warning: --init-from {}: {class} has {rows} outputs there and {} here: it is re-initialised",
            path.display(),
            whole[&head_weight].size()[0]
        ));
    }
    Ok(rows.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(shape: &[i64], strides: &[i64], offset: i64) -> std::result::Result<Tensor, String> {
        let t = pth::RawTensor {
            name: "w".into(),
            dtype: pth::Dtype::F32,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            storage_offset: offset,
            data: std::sync::Arc::new((0..6u8).flat_map(|i| f32::from(i).to_le_bytes()).collect()),
            requires_grad: false,
        };
        to_tensor(&t, &mut HashMap::new())
    }

    #[test]
    fn a_view_is_checked_against_its_storage_without_overflow() {
        let v = view(&[2, 3], &[3, 1], 0).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(v.flatten(0, -1)).unwrap(),
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        // Transposed.
        assert_eq!(view(&[3, 2], &[1, 3], 0).unwrap().double_value(&[2, 1]), 5.0);
        // Strides whose span overflows 64 bits (a debug build panicked on it, a release one
        // wrapped around), with or without elements.
        let far = view(&[3, 2], &[i64::MAX, 1], 0).unwrap_err();
        assert!(far.contains("past its storage"), "{far}");
        assert_eq!(view(&[3, 0], &[i64::MAX, 1], 0).unwrap().size(), [3, 0]);
        assert!(view(&[2, 3], &[3, 1], 1).unwrap_err().contains("past its storage"));
        assert!(view(&[2, 3], &[-3, 1], 0).unwrap_err().contains("negative"));
    }
}
