//! AlexNet: parameters by name, their initialisation, and the one functional forward pass every
//! caller uses (the Rust trainer and CLI, the Python `nn.Module`, the two-device placement).
//!
//! The forward takes a [`Config`] and a [`Params`] map (name -> one shard per device) and builds
//! nothing: the caller owns the parameters (our trainer, or a Python module's `nn.Parameter`s),
//! so the autograd graph links back to whichever side created them. Activations travel as one
//! channel slice per device; on one device that is the ordinary network.
//!
//! - this file: [`Params`], initialisation, and splitting over the placement;
//! - `forward.rs`: the forward pass, its stages, activations by name, and dropout's masks.
mod forward;

use crate::config::{Config, Init};
use crate::error::{Error, Result};
use crate::ops;
use crate::placement::{device_name, Placement};
pub use forward::{activations, forward, forward_masked, forward_with, stage_names, Masks, Stage};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Named parameters (`conv1.weight`, `features.0.bias`, ...), each as its shards along dim 0,
/// one per device of the placement (a single shard on one device). Tensors are shallow handles:
/// they share storage and autograd identity with whoever owns them.
#[derive(Debug, Default)]
pub struct Params {
    map: BTreeMap<String, Vec<Tensor>>,
}

impl Params {
    /// Whole (unsharded) parameters.
    pub fn new(map: BTreeMap<String, Tensor>) -> Self {
        Params {
            map: map.into_iter().map(|(k, v)| (k, vec![v])).collect(),
        }
    }

    /// The device of the first shard (the CPU for no parameters): where a data-parallel run's
    /// small collectives go.
    pub fn device(&self) -> tch::Device {
        self.iter_shards()
            .next()
            .map_or(tch::Device::Cpu, |(_, _, t)| t.device())
    }

    /// A fingerprint of the values (their float32 bits summed as integers: exact, in any
    /// order), below 2^32: equal on processes that hold the same parameters.
    pub fn fingerprint(&self) -> Result<u64> {
        let mut sum = 0i64;
        for (_, _, t) in self.iter_shards() {
            let bits = t.f_to_kind(Kind::Float)?.f_view_dtype(Kind::Int)?;
            sum = sum.wrapping_add(bits.f_sum(Kind::Int64)?.int64_value(&[]));
        }
        Ok(sum as u64 & 0xffff_ffff)
    }

    pub fn from_shards(map: BTreeMap<String, Vec<Tensor>>) -> Self {
        Params { map }
    }

    /// The shards by name.
    pub fn into_map(self) -> BTreeMap<String, Vec<Tensor>> {
        self.map
    }

    /// The shards of parameter `name`.
    pub fn shards(&self, name: &str) -> Result<&[Tensor]> {
        self.map.get(name).map(Vec::as_slice).ok_or_else(|| {
            let present: Vec<&str> = self.map.keys().map(String::as_str).collect();
            Error::MissingParam(name.to_string(), present.join(", "))
        })
    }

    /// An unsharded parameter (the first shard of a sharded one).
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        Ok(&self.shards(name)?[0])
    }

    /// (name, shard index, tensor) for every shard.
    pub fn iter_shards(&self) -> impl Iterator<Item = (&String, usize, &Tensor)> {
        self.map
            .iter()
            .flat_map(|(k, v)| v.iter().enumerate().map(move |(i, t)| (k, i, t)))
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    /// Whole parameters, gathered from their shards onto the CPU (for checkpoints).
    pub fn gather_cpu(&self) -> Result<BTreeMap<String, Tensor>> {
        self.map
            .iter()
            .map(|(k, v)| {
                let parts: Vec<Tensor> = v.iter().map(|t| t.detach().to_device(Device::Cpu)).collect();
                Ok((k.clone(), Tensor::f_cat(&parts, 0)?))
            })
            .collect()
    }

    /// Checks that every parameter the config names is present with the right (whole) shape, in
    /// equal row blocks (shards), a bias in as many as its weight (the forward pairs them), a
    /// grouped convolution's shards holding whole groups and LRN towers (what
    /// [`Placement::shards`] makes), and on the devices the forward expects them on.
    pub fn check(&self, cfg: &Config) -> Result<()> {
        // Channel groups a convolution's shards must hold whole: its own, and its LRN's towers.
        let groups: BTreeMap<String, [(&str, i64); 2]> = cfg
            .convs
            .iter()
            .map(|c| {
                let towers = if c.lrn { cfg.lrn.groups } else { 1 };
                (
                    format!("{}.weight", c.name),
                    [("groups", c.groups), ("LRN towers", towers)],
                )
            })
            .collect();
        // Where a single-device model lives (and a placement its whole layers: the first device).
        let home = self
            .shards(&format!("{}.weight", cfg.convs[0].name))?
            .first()
            .map(Tensor::device);
        for (name, shape) in cfg.param_shapes() {
            let shards = self.shards(&name)?;
            let wrong = |got: String| {
                Error::Shape(format!(
                    "parameter `{name}` has shape {got}, the {} preset at {s}x{s} expects {shape:?}",
                    cfg.preset,
                    s = cfg.input_size
                ))
            };
            let Some(first) = shards.first() else {
                return Err(wrong("[] (no shards)".into()));
            };
            if shards
                .iter()
                .any(|t| t.dim() != shape.len() || t.size() != first.size())
            {
                let sizes: Vec<Vec<i64>> = shards.iter().map(Tensor::size).collect();
                let equal = if shards.iter().all(|t| t.dim() == shape.len()) {
                    ": shards must be equal row blocks"
                } else {
                    ""
                };
                return Err(wrong(format!("{sizes:?} (in shards{equal})")));
            }
            let n = shards.len() as i64;
            let split = groups
                .get(&name)
                .into_iter()
                .flatten()
                .find(|(_, g)| n > 1 && *g > 1 && g % n != 0);
            if let Some((what, g)) = split {
                return Err(Error::Shape(format!(
                    "parameter `{name}` is in {n} shards: its {g} {what} do not split into whole ones"
                )));
            }
            let mut whole = first.size();
            whole[0] = shards.iter().map(|t| t.size()[0]).sum();
            if whole != shape {
                return Err(wrong(format!("{whole:?}")));
            }
            if let Some(layer) = name.strip_suffix(".bias") {
                let weights = self.shards(&format!("{layer}.weight"))?.len();
                if weights != shards.len() {
                    return Err(Error::Shape(format!(
                        "parameter `{name}` is in {} shards, `{layer}.weight` in {weights}",
                        shards.len()
                    )));
                }
            }
            self.check_devices(&name, shards, home)?;
        }
        Ok(())
    }

    /// As torch.nn, a layer on another device (a new head left on the CPU) is an error, not a
    /// silent copy of the activations to it: a whole parameter sits on `home` (conv1's first
    /// shard's device), a bias shard on its weight shard's.
    fn check_devices(&self, name: &str, shards: &[Tensor], home: Option<Device>) -> Result<()> {
        if let ([one], Some(home)) = (shards, home) {
            if one.device() != home {
                return Err(Error::Shape(format!(
                    "parameter `{name}` is on {} but the network's first layer is on {}: move it there \
                     (e.g. model.to(\"{}\"))",
                    device_name(one.device()),
                    device_name(home),
                    device_name(home)
                )));
            }
        }
        let Some(layer) = name.strip_suffix(".bias") else {
            return Ok(());
        };
        let weights = self.shards(&format!("{layer}.weight"))?;
        match (0..shards.len()).find(|&k| weights.get(k).is_some_and(|w| w.device() != shards[k].device())) {
            Some(k) => Err(Error::Shape(format!(
                "shard {k} of `{name}` is on {} but `{layer}.weight`'s is on {}",
                device_name(shards[k].device()),
                device_name(weights[k].device())
            ))),
            None => Ok(()),
        }
    }
}

/// The config's parameters, initialised as the preset says (float32, drawn on the CPU from
/// torch's global generator, so the values do not depend on the placement), then split into
/// shards and moved where `placement` puts them, as trainable leaves.
pub fn init_params(cfg: &Config, placement: &Placement) -> Result<Params> {
    let whole = init_whole(cfg)?;
    shard(cfg, placement, &whole, false)
}

/// Whole CPU tensors, initialised from torch's global generator (seeded by the caller, e.g.
/// Python's `torch.manual_seed`, as `nn.Module` constructors draw).
pub fn init_whole(cfg: &Config) -> Result<BTreeMap<String, Tensor>> {
    init_drawn(cfg, |draws| {
        for (t, normal) in draws {
            // In place, through a second handle on the same storage.
            let mut t = t.shallow_clone();
            let _ = if *normal {
                t.f_normal_(0.0, 1.0)?
            } else {
                t.f_uniform_(0.0, 1.0)?
            };
        }
        Ok(())
    })
}

/// Whole CPU tensors, initialised from a generator of their own seeded with `seed`: the values of
/// `torch.manual_seed(seed)` then [`init_whole`], but another thread drawing from torch's global
/// generator meanwhile changes nothing (and is not disturbed).
pub fn init_seeded(cfg: &Config, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    init_drawn(cfg, |draws| ops::seeded_fill(draws, seed))
}

/// The parameters from their random draws, which `fill` makes in order (true: standard normal,
/// false: uniform on [0, 1)): a `Normal` layer draws its weight, a `TorchDefault` one its weight
/// and then its bias, as torch.randn / torch.rand of each shape would.
fn init_drawn(cfg: &Config, fill: impl FnOnce(&[(Tensor, bool)]) -> Result<()>) -> Result<BTreeMap<String, Tensor>> {
    let _guard = tch::no_grad_guard();
    let opts = (Kind::Float, Device::Cpu);
    let inits: Vec<Init> = cfg
        .convs
        .iter()
        .map(|c| c.init)
        .chain(cfg.fcs.iter().map(|f| f.init))
        .collect();
    let shapes = cfg.param_shapes();
    let mut draws = Vec::new();
    for (pair, init) in shapes.chunks(2).zip(&inits) {
        let (wshape, bshape) = (&pair[0].1, &pair[1].1);
        match init {
            Init::Normal { .. } => draws.push((Tensor::f_empty(wshape, opts)?, true)),
            Init::TorchDefault => {
                draws.push((Tensor::f_empty(wshape, opts)?, false));
                draws.push((Tensor::f_empty(bshape, opts)?, false));
            }
        }
    }
    fill(&draws)?;
    let mut drawn = draws.into_iter().map(|(t, _)| t);
    let mut next = || {
        drawn
            .next()
            .ok_or_else(|| Error::Internal("fewer draws than layers".into()))
    };
    let mut map = BTreeMap::new();
    for (pair, init) in shapes.chunks(2).zip(&inits) {
        let ((wname, wshape), (bname, bshape)) = (&pair[0], &pair[1]);
        let (w, b) = match *init {
            Init::Normal { std, bias } => (next()? * std, Tensor::f_full(bshape, bias, opts)?),
            Init::TorchDefault => {
                // kaiming_uniform_(a=sqrt(5)) and the bias rule of nn.Conv2d/nn.Linear both give
                // U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                let fan_in: i64 = wshape[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                (next()? * (2.0 * bound) - bound, next()? * (2.0 * bound) - bound)
            }
        };
        map.insert(wname.clone(), w);
        map.insert(bname.clone(), b);
    }
    Ok(map)
}

/// Splits whole tensors into the placement's shards (trainable leaves on their devices), conv
/// weights stored channels_last if asked.
pub fn shard(
    cfg: &Config,
    placement: &Placement,
    whole: &BTreeMap<String, Tensor>,
    channels_last: bool,
) -> Result<Params> {
    let mut map = split(cfg, placement, whole, !channels_last)?;
    if channels_last {
        for shards in map.values_mut() {
            for t in shards.iter_mut() {
                let cl = if t.dim() == 4 {
                    ops::channels_last(t)?
                } else {
                    t.shallow_clone()
                };
                *t = cl.set_requires_grad(true);
            }
        }
    }
    Ok(Params { map })
}

/// Splits whole tensors (parameters, or optimizer buffers shaped like them) into the
/// placement's shards, copied to their devices.
pub fn split(
    cfg: &Config,
    placement: &Placement,
    whole: &BTreeMap<String, Tensor>,
    trainable: bool,
) -> Result<BTreeMap<String, Vec<Tensor>>> {
    let mut map: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    let shapes: BTreeMap<String, Vec<i64>> = cfg.param_shapes().into_iter().collect();
    for sh in placement.shards(cfg)? {
        let t = whole
            .get(&sh.name)
            .ok_or_else(|| Error::MissingParam(sh.name.clone(), "(given tensors)".into()))?;
        if Some(&t.size()) != shapes.get(&sh.name) {
            return Err(Error::Shape(format!(
                "parameter `{}` has shape {:?}, the {} preset expects {:?}",
                sh.name,
                t.size(),
                cfg.preset,
                shapes.get(&sh.name).cloned().unwrap_or_default()
            )));
        }
        let part = t
            .f_narrow(0, sh.rows.start, sh.rows.end - sh.rows.start)?
            .to_device(sh.device)
            .detach()
            .copy();
        map.entry(sh.name)
            .or_default()
            .push(if trainable { part.set_requires_grad(true) } else { part });
    }
    Ok(map)
}
