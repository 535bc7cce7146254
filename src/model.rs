//! AlexNet: parameters by name, their initialisation, and the one functional forward pass every
//! caller uses (the Rust trainer and CLI, the Python `nn.Module`, the two-device placement).
//!
//! The forward takes a [`Config`] and a [`Params`] map (name -> one shard per device) and builds
//! nothing: the caller owns the parameters (our trainer, or a Python module's `nn.Parameter`s),
//! so the autograd graph links back to whichever side created them. Activations travel as one
//! channel slice per device; on one device that is the ordinary network.
use crate::config::{Activation, Config, ConvLayer, FcLayer, Init};
use crate::conv::{self, ConvArgs};
use crate::data::rng::Rng;
use crate::error::{Error, Result};
use crate::ops;
use crate::placement::Placement;
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

    /// Checks that every parameter the config names is present with the right (whole) shape.
    pub fn check(&self, cfg: &Config) -> Result<()> {
        for (name, shape) in cfg.param_shapes() {
            let shards = self.shards(&name)?;
            let rows: i64 = shards.iter().map(|t| t.size()[0]).sum();
            let mut whole = shards[0].size();
            whole[0] = rows;
            if whole != shape {
                return Err(Error::Shape(format!(
                    "parameter `{name}` has shape {whole:?}, the {} preset expects {shape:?}",
                    cfg.preset
                )));
            }
        }
        Ok(())
    }
}

/// The config's parameters, initialised as the preset says (float32, drawn on the CPU from
/// torch's global generator, so the values do not depend on the placement), then split into
/// shards and moved where `placement` puts them, as trainable leaves.
pub fn init_params(cfg: &Config, placement: &Placement) -> Result<Params> {
    let whole = init_whole(cfg)?;
    shard(cfg, placement, &whole, false)
}

/// Whole CPU tensors, initialised.
pub fn init_whole(cfg: &Config) -> Result<BTreeMap<String, Tensor>> {
    let _guard = tch::no_grad_guard();
    let mut map = BTreeMap::new();
    let inits = cfg.convs.iter().map(|c| c.init).chain(cfg.fcs.iter().map(|f| f.init));
    let opts = (Kind::Float, Device::Cpu);
    for (pair, init) in cfg.param_shapes().chunks(2).zip(inits) {
        let ((wname, wshape), (bname, bshape)) = (&pair[0], &pair[1]);
        let (w, b) = match init {
            Init::Normal { std, bias } => (
                Tensor::f_randn(wshape, opts)? * std,
                Tensor::f_full(bshape, bias, opts)?,
            ),
            Init::TorchDefault => {
                // kaiming_uniform_(a=sqrt(5)) and the bias rule of nn.Conv2d/nn.Linear both give
                // U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                let fan_in: i64 = wshape[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                let u = |shape: &[i64]| -> Result<Tensor> { Ok(Tensor::f_rand(shape, opts)? * (2.0 * bound) - bound) };
                (u(wshape)?, u(bshape)?)
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

/// One stage of the forward pass, as reported to a [`forward_with`] observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Conv,
    Lrn,
    Pool,
    AdaptivePool,
    Fc,
}

impl Stage {
    /// The name `alexnet info` gives this stage's output in layer `layer`: `conv1`, `conv1.lrn`,
    /// `conv1.pool`, `avgpool`, `fc6` (torchvision's keys for that preset: `features.0`, ...).
    pub fn label(self, layer: &str) -> String {
        match self {
            Stage::Conv | Stage::Fc => layer.to_string(),
            Stage::Lrn => format!("{layer}.lrn"),
            Stage::Pool => format!("{layer}.pool"),
            Stage::AdaptivePool => "avgpool".into(),
        }
    }
}

/// Activations as channel slices, one per device (one slice on one device).
struct Act(Vec<Tensor>);

impl Act {
    fn map(self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Act> {
        Ok(Act(self.0.iter().map(f).collect::<Result<_>>()?))
    }

    /// All channels, concatenated on `device`.
    fn gather(&self, device: Device) -> Result<Tensor> {
        if self.0.len() == 1 {
            return Ok(self.0[0].to_device(device));
        }
        let parts: Vec<Tensor> = self.0.iter().map(|t| t.to_device(device)).collect();
        Ok(Tensor::f_cat(&parts, 1)?)
    }

    /// The whole activation, for observers and the output.
    fn whole(&self) -> Result<Tensor> {
        self.gather(self.0[0].device())
    }
}

/// Called with (layer name, stage, whole output) after every stage; returns true to end the
/// forward pass there.
type Observer<'a> = Option<&'a mut dyn FnMut(&str, Stage, &Tensor) -> bool>;

/// Shows `h` to the observer; true if it asked to stop.
fn report(observe: &mut Observer, name: &str, stage: Stage, h: &Act) -> Result<bool> {
    match observe {
        Some(f) => Ok(f(name, stage, &h.whole()?)),
        None => Ok(false),
    }
}

/// How training-mode dropout draws its masks.
#[derive(Clone, Copy, Debug)]
pub enum Masks<'a> {
    /// From torch's global generator (the Python `nn.Module`'s training mode).
    Torch,
    /// Each sample's mask row from its own stream, seeded by (seed, step, the sample's dataset
    /// index) and the layer: the same masks however a batch is split over ranks or devices,
    /// and on resume (the Rust trainer).
    Keyed { seed: u64, step: u64, samples: &'a [usize] },
}

/// The forward pass: logits `(N, classes)` for images `(N, 3, H, W)`. `train` turns dropout on
/// (masks from torch's generator).
pub fn forward(cfg: &Config, params: &Params, x: &Tensor, train: bool) -> Result<Tensor> {
    forward_masked(cfg, params, x, train.then_some(Masks::Torch))
}

/// [`forward`] with dropout's masks drawn as `masks` says (`None`: evaluation, no dropout).
pub fn forward_masked(cfg: &Config, params: &Params, x: &Tensor, masks: Option<Masks>) -> Result<Tensor> {
    forward_impl(cfg, params, x, masks, None).map_err(|e| dtype_hint(e, params, x))
}

/// A libtorch failure on an input whose dtype differs from the parameters' is that mismatch
/// (outside autocast, convolutions need both the same): said so, naming `x`.
fn dtype_hint(e: Error, params: &Params, x: &Tensor) -> Error {
    let w = params.iter_shards().next().map(|(_, _, t)| t.kind());
    match (&e, w) {
        (Error::Torch(_) | Error::Op { .. }, Some(w)) if w != x.kind() => Error::Dtype(format!(
            "x has dtype {:?} but the parameters are {w:?}: convert one to the other (e.g. x.float(), or \
             model.to(x.dtype)) or run under autocast",
            x.kind()
        )),
        _ => e,
    }
}

/// [`forward`], calling `observe(layer name, stage, output)` after every stage.
pub fn forward_with(
    cfg: &Config,
    params: &Params,
    x: &Tensor,
    train: bool,
    observe: &mut dyn FnMut(&str, Stage, &Tensor),
) -> Result<Tensor> {
    let mut go_on = |name: &str, stage: Stage, t: &Tensor| {
        observe(name, stage, t);
        false
    };
    forward_impl(cfg, params, x, train.then_some(Masks::Torch), Some(&mut go_on))
}

/// Every stage name of the network, in forward order (the rows of `alexnet info` but `input`).
pub fn stage_names(cfg: &Config) -> Vec<String> {
    let mut names = Vec::new();
    for c in &cfg.convs {
        names.push(Stage::Conv.label(&c.name));
        if c.lrn {
            names.push(Stage::Lrn.label(&c.name));
        }
        if c.pool {
            names.push(Stage::Pool.label(&c.name));
        }
    }
    if cfg.adaptive_pool.is_some() {
        names.push(Stage::AdaptivePool.label(""));
    }
    names.extend(cfg.fcs.iter().map(|f| f.name.clone()));
    names
}

/// The outputs of the stages named `layers` (see [`stage_names`]), in the order asked, connected
/// to the autograd graph of `params` and `x`. The pass stops after the deepest one asked for.
/// With two devices each output is gathered on the first device. `masks`: dropout as in
/// [`forward_masked`] (`None`: evaluation mode).
pub fn activations(
    cfg: &Config,
    params: &Params,
    x: &Tensor,
    layers: &[String],
    masks: Option<Masks>,
) -> Result<Vec<Tensor>> {
    let names = stage_names(cfg);
    if layers.is_empty() {
        return Err(Error::Config(format!(
            "no layer asked for; the layers: {}",
            names.join(", ")
        )));
    }
    let mut deepest = 0;
    for l in layers {
        let at = names.iter().position(|n| n == l).ok_or_else(|| {
            Error::Config(format!(
                "no layer `{l}` in the {} network; the layers: {}",
                cfg.preset,
                names.join(", ")
            ))
        })?;
        deepest = deepest.max(at);
    }
    let mut got: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut keep = |name: &str, stage: Stage, t: &Tensor| {
        let label = stage.label(name);
        let done = label == names[deepest];
        if layers.contains(&label) {
            got.insert(label, t.shallow_clone());
        }
        done
    };
    let _up_to_the_deepest =
        forward_impl(cfg, params, x, masks, Some(&mut keep)).map_err(|e| dtype_hint(e, params, x))?;
    Ok(layers.iter().map(|l| got[l].shallow_clone()).collect())
}

fn forward_impl(
    cfg: &Config,
    params: &Params,
    x: &Tensor,
    masks: Option<Masks>,
    mut observe: Observer,
) -> Result<Tensor> {
    check_input(cfg, x)?;
    let mut h = Act(vec![x.shallow_clone()]);
    for c in &cfg.convs {
        let stop;
        (h, stop) = conv_stage(cfg, c, params, h, &mut observe)?;
        if stop {
            return h.whole();
        }
    }
    if let Some(side) = cfg.adaptive_pool {
        h = h.map(|t| Ok(t.f_adaptive_avg_pool2d([side, side])?))?;
        if report(&mut observe, "avgpool", Stage::AdaptivePool, &h)? {
            return h.whole();
        }
    }
    let first = cfg.fcs[0].name.as_str();
    let expected = params.get(&format!("{first}.weight"))?.size()[1];
    let features: i64 = h.0.iter().map(|t| t.size()[1..].iter().product::<i64>()).sum();
    if features != expected {
        return Err(Error::Shape(format!(
            "input of {}x{} pixels gives {features} features, but {first} expects {expected}: \
             the {} preset needs {}x{} inputs",
            x.size()[2],
            x.size()[3],
            cfg.preset,
            cfg.input_size,
            cfg.input_size
        )));
    }
    h = h.map(|t| Ok(t.f_flatten(1, -1)?))?;
    let last = cfg.fcs.len() - 1;
    for (i, f) in cfg.fcs.iter().enumerate() {
        h = fc_stage(cfg, (i, f), params, h, masks, i == last)?;
        if report(&mut observe, &f.name, Stage::Fc, &h)? {
            break;
        }
    }
    h.whole()
}

/// conv -> activation -> [LRN] -> [max pool], each device computing its half of the output
/// channels; true if the observer asked to stop.
fn conv_stage(cfg: &Config, c: &ConvLayer, params: &Params, x: Act, observe: &mut Observer) -> Result<(Act, bool)> {
    let ws = params.shards(&format!("{}.weight", c.name))?;
    let bs = params.shards(&format!("{}.bias", c.name))?;
    let n = ws.len() as i64;
    // ReLU -> [LRN] -> max-pool on one CPU device, with nobody watching the stages in between:
    // one fused op (kernels/lrn_pool.h) instead of three passes and their saved tensors. On CUDA
    // that op is only the composition of the same ops, so the stages stay separate there.
    let fused = c.pool
        && n == 1
        && cfg.activation == Activation::Relu
        && c.lrn
        && observe.is_none()
        && ws[0].device() == Device::Cpu;
    // Grouped layers whose groups divide over the devices read only their own input slice.
    let local = n > 1 && x.0.len() as i64 == n && c.groups % n == 0;
    let mut parts = Vec::with_capacity(ws.len());
    for (k, (w, b)) in ws.iter().zip(bs).enumerate() {
        let input = if local {
            x.0[k].shallow_clone()
        } else {
            x.gather(w.device())?
        };
        let groups = if local { c.groups / n } else { c.groups };
        let args = ConvArgs {
            stride: c.stride,
            padding: c.padding,
            groups,
        };
        let y = conv::conv2d(cfg.conv_backend, &input, w, b, args)?;
        parts.push(if fused { y } else { activate(cfg, y)? });
    }
    if fused {
        let (l, p) = (cfg.lrn, cfg.pool);
        let lrn = c.lrn.then_some(ops::LrnArgs {
            size: l.size,
            alpha: l.alpha,
            beta: l.beta,
            k: l.k,
        });
        let h = ops::relu_lrn_max_pool2d(&parts[0], lrn, p.kernel, p.stride, p.ceil_mode)?;
        return Ok((Act(vec![h]), false));
    }
    let mut h = Act(parts);
    if report(observe, &c.name, Stage::Conv, &h)? {
        return Ok((h, true));
    }
    if c.lrn {
        h = lrn_sharded(cfg, &h)?;
        if report(observe, &c.name, Stage::Lrn, &h)? {
            return Ok((h, true));
        }
    }
    if c.pool {
        let p = cfg.pool;
        h =
            h.map(|t| Ok(t.f_max_pool2d([p.kernel, p.kernel], [p.stride, p.stride], [0, 0], [1, 1], p.ceil_mode)?))?;
        let stop = report(observe, &c.name, Stage::Pool, &h)?;
        return Ok((h, stop));
    }
    Ok((h, false))
}

/// The config's non-linearity, in place (as torchvision's ReLU(inplace=True): no second
/// activation-sized allocation; tanh's backward reads its output, so in place is safe too).
fn activate(cfg: &Config, mut h: Tensor) -> Result<Tensor> {
    Ok(match cfg.activation {
        Activation::Relu => h.f_relu_()?,
        Activation::Tanh => h.f_tanh_()?,
    })
}

/// LRN over channel slices: each slice borrows the `size/2` channels before it and the
/// `(size-1)/2` after it from its neighbours, so the result equals LRN over all channels.
fn lrn_sharded(cfg: &Config, h: &Act) -> Result<Act> {
    let p = cfg.lrn;
    let (pre, post) = (p.size / 2, (p.size - 1) / 2);
    let mut out = Vec::with_capacity(h.0.len());
    for (k, own) in h.0.iter().enumerate() {
        let dev = own.device();
        let mut pieces = Vec::new();
        if k > 0 {
            let left = &h.0[k - 1];
            let take = pre.min(left.size()[1]);
            pieces.push(left.f_narrow(1, left.size()[1] - take, take)?.to_device(dev));
        }
        pieces.push(own.shallow_clone());
        if k + 1 < h.0.len() {
            let right = &h.0[k + 1];
            pieces.push(right.f_narrow(1, 0, post.min(right.size()[1]))?.to_device(dev));
        }
        let offset = if k > 0 { pieces[0].size()[1] } else { 0 };
        let input = if pieces.len() == 1 {
            own.shallow_clone()
        } else {
            Tensor::f_cat(&pieces, 1)?
        };
        let y = ops::lrn(&input, p.size, p.alpha, p.beta, p.k)?;
        out.push(if pieces.len() == 1 {
            y
        } else {
            y.f_narrow(1, offset, own.size()[1])?
        });
    }
    Ok(Act(out))
}

/// [dropout] -> linear -> [activation unless last]. Each device computes its slice of the outputs
/// from the whole input; the last layer is whole on the first device.
fn fc_stage(
    cfg: &Config,
    (layer, f): (usize, &FcLayer),
    params: &Params,
    x: Act,
    masks: Option<Masks>,
    last: bool,
) -> Result<Act> {
    let x = match masks {
        Some(m) if f.dropout_before => dropout(&x, cfg.dropout, m, layer)?,
        _ => x,
    };
    let ws = params.shards(&format!("{}.weight", f.name))?;
    let bs = params.shards(&format!("{}.bias", f.name))?;
    let mut parts = Vec::with_capacity(ws.len());
    for (w, b) in ws.iter().zip(bs) {
        let h = x.gather(w.device())?.f_linear(w, Some(b))?;
        parts.push(if last { h } else { activate(cfg, h)? });
    }
    Ok(Act(parts))
}

/// Inverted dropout with one mask for the whole layer, split over the slices, so every placement
/// applies the same mask.
fn dropout(x: &Act, p: f64, masks: Masks, layer: usize) -> Result<Act> {
    if p <= 0.0 {
        return Ok(Act(x.0.iter().map(Tensor::shallow_clone).collect()));
    }
    let first = &x.0[0];
    let width: i64 = x.0.iter().map(|t| t.size()[1]).sum();
    let mask = match masks {
        Masks::Torch => {
            Tensor::f_empty([first.size()[0], width], (first.kind(), first.device()))?.f_bernoulli_float_(1.0 - p)?
                / (1.0 - p)
        }
        Masks::Keyed { seed, step, samples } => keyed_mask(seed, step, samples, layer, width, p)?
            .to_device(first.device())
            .to_kind(first.kind()),
    };
    let mut offset = 0;
    let mut out = Vec::with_capacity(x.0.len());
    for t in &x.0 {
        let w = t.size()[1];
        out.push(t * mask.f_narrow(1, offset, w)?.to_device(t.device()));
        offset += w;
    }
    Ok(Act(out))
}

/// Rows of 0 and 1/(1-p), row i from sample `samples[i]`'s own stream for this step and layer.
fn keyed_mask(seed: u64, step: u64, samples: &[usize], layer: usize, width: i64, p: f64) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p) as f32;
    let mut v = Vec::with_capacity(samples.len() * width as usize);
    for &s in samples {
        let mut rng = Rng::for_sample(seed ^ (0xd0_u64 << 56) ^ layer as u64, step, s as u64);
        v.extend((0..width).map(|_| if rng.unit() < p { 0.0 } else { keep }));
    }
    Ok(Tensor::from_slice(&v).f_view([samples.len() as i64, width])?)
}

fn check_input(cfg: &Config, x: &Tensor) -> Result<()> {
    // tch names every device it does not know (meta included) Mps: refuse all but cpu and cuda.
    if !matches!(x.device(), Device::Cpu | Device::Cuda(_)) {
        return Err(Error::Shape(
            "x is not on a cpu or cuda device (meta, mps and other devices are not supported)".into(),
        ));
    }
    let size = x.size();
    if size.len() != 4 || size[1] != cfg.in_channels {
        return Err(Error::Shape(format!(
            "x must be (N, {}, H, W) images, got a tensor of shape {size:?}",
            cfg.in_channels
        )));
    }
    if !matches!(x.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        return Err(Error::Dtype(format!(
            "x must be floating point, got dtype {:?}",
            x.kind()
        )));
    }
    // Every stage must keep at least one pixel (clear error instead of libtorch's).
    cfg.spatial_sizes(size[2])?;
    cfg.spatial_sizes(size[3])?;
    Ok(())
}
