//! The forward pass over [`Params`]: conv, LRN, pool and FC stages, each device computing its
//! channel slice; an observer sees each stage (activations by name); dropout's masks.
use super::Params;
use crate::config::{Activation, Config, ConvLayer, FcLayer};
use crate::conv::{self, ConvArgs};
use crate::data::rng::Rng;
use crate::error::{Error, Result};
use crate::ops;
use crate::optim::InBackward;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

mod lrn;
use lrn::{lrn_stage, per_tower};

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
    forward_masked(cfg, params, x, train.then_some(Masks::Torch), None)
}

/// [`forward`] with dropout's masks drawn as `masks` says (`None`: evaluation, no dropout), and
/// the fully connected layers' SGD update run by their backward where `update` says so (the
/// training loop; see [`InBackward`]).
pub fn forward_masked(
    cfg: &Config,
    params: &Params,
    x: &Tensor,
    masks: Option<Masks>,
    update: Option<&InBackward>,
) -> Result<Tensor> {
    forward_impl(cfg, params, x, masks, update, None).map_err(|e| dtype_hint(e, params, x))
}

/// A libtorch failure on an input whose dtype differs from the parameters' is that mismatch
/// (outside autocast, convolutions need both the same): said so, naming `x`. Under autocast the
/// two may differ, and the failure is another one (kept).
fn dtype_hint(e: Error, params: &Params, x: &Tensor) -> Error {
    let w = params.iter_shards().next().map(|(_, _, t)| t.kind());
    let autocast = ops::autocast_dtype(x.device().is_cuda()).is_some();
    match (&e, w) {
        (Error::Torch(_) | Error::Op { .. }, Some(w)) if w != x.kind() && !autocast => Error::Dtype(format!(
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
    forward_impl(cfg, params, x, train.then_some(Masks::Torch), None, Some(&mut go_on))
}

/// Every stage name of the network, in forward order: the rows of `alexnet info` but `input`.
pub fn stage_names(cfg: &Config) -> Result<Vec<String>> {
    let rows = crate::info::layer_table(cfg, cfg.input_size)?;
    Ok(rows.into_iter().skip(1).map(|r| r.name).collect())
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
    let names = stage_names(cfg)?;
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
        forward_impl(cfg, params, x, masks, None, Some(&mut keep)).map_err(|e| dtype_hint(e, params, x))?;
    Ok(layers.iter().map(|l| got[l].shallow_clone()).collect())
}

fn forward_impl(
    cfg: &Config,
    params: &Params,
    x: &Tensor,
    masks: Option<Masks>,
    update: Option<&InBackward>,
    mut observe: Observer,
) -> Result<Tensor> {
    check_input(cfg, x)?;
    // Before the stages index them: a 1-D fc6.weight panicked, a bias in fewer shards than its
    // weight gave fewer outputs, shards of unequal rows read another device's input, in silence.
    params.check(cfg)?;
    // As torch.nn: a batch on another device than the first layer is an error, not a silent copy
    // (placements move activations between their devices; the input is the caller's to place).
    let conv1 = format!("{}.weight", cfg.convs[0].name);
    let on = params.get(&conv1)?.device();
    if x.device() != on {
        return Err(Error::Shape(format!(
            "x is on {} but {conv1} is on {}: move the images there (x.to(\"{}\"))",
            crate::placement::device_name(x.device()),
            crate::placement::device_name(on),
            crate::placement::device_name(on)
        )));
    }
    let mut h = Act(vec![x.shallow_clone()]);
    for c in &cfg.convs {
        let stop;
        (h, stop) = conv_stage(cfg, c, params, h, &mut observe)?;
        if stop {
            return h.whole();
        }
    }
    if let Some(side) = cfg.adaptive_pool {
        // Already side x side (the torchvision preset at 224): the pool would be the identity.
        if h.0.iter().any(|t| t.size()[2..] != [side, side]) {
            h = h.map(|t| Ok(t.f_adaptive_avg_pool2d([side, side])?))?;
        }
        if report(&mut observe, "avgpool", Stage::AdaptivePool, &h)? {
            return h.whole();
        }
    }
    let first = cfg.fcs[0].name.as_str();
    let expected = params.get(&format!("{first}.weight"))?.size()[1];
    let features: i64 = h.0.iter().map(|t| t.size()[1..].iter().product::<i64>()).sum();
    // fc6's columns are the features of square maps: a 4x9 map (a 160x320 input) has the 36
    // values of a 6x6 one, laid out otherwise, and gave garbage logits in silence.
    let map = h.0[0].size()[2..].to_vec();
    if features != expected || map[0] != map[1] {
        let (side, s) = (cfg.input_size, format!("{}x{}", x.size()[2], x.size()[3]));
        // At the size the network is built for (or any, with adaptive pooling) the weight is wrong.
        let culprit = if cfg.adaptive_pool.is_some() || x.size()[2..] == [side, side] {
            format!("{first}.weight must have {features} columns")
        } else {
            format!("the {} preset needs {side}x{side} inputs", cfg.preset)
        };
        return Err(Error::Shape(format!(
            "input of {s} pixels gives {features} features ({}x{} maps), but {first} expects {expected} \
             (from square maps): {culprit}",
            map[0], map[1]
        )));
    }
    h = h.map(|t| Ok(t.f_flatten(1, -1)?))?;
    let last = cfg.fcs.len() - 1;
    for (i, f) in cfg.fcs.iter().enumerate() {
        h = fc_stage(cfg, (i, f), params, h, masks, update, i == last)?;
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
    // one fused op (kernels/lrn_pool.h) instead of two or three passes and their saved tensors.
    // On CUDA that op is only the composition of the same ops, so the stages stay separate there.
    // Without an LRN it pays off on channels_last input; on the demo's small NCHW planes ATen's
    // relu + max-pool measured 1-2% faster (BENCHMARKS.md).
    let fused = c.pool
        && n == 1
        && cfg.activation == Activation::Relu
        && (c.lrn || cpu_channels_last(cfg))
        && observe.is_none()
        && ws[0].device() == Device::Cpu;
    // A grouped layer in n equal shards of whole groups (`Params::check`): shard k reads input
    // slice k alone, the previous layer's shard k when that one is in n shards too.
    let grouped = n > 1 && c.groups > 1;
    let local = grouped && x.0.len() as i64 == n;
    let mut parts = Vec::with_capacity(ws.len());
    for (k, (w, b)) in ws.iter().zip(bs).enumerate() {
        let input = if local {
            x.0[k].to_device(w.device())
        } else if grouped {
            let all = x.gather(w.device())?;
            let per = all.size()[1] / n;
            all.f_narrow(1, k as i64 * per, per)?
        } else {
            x.gather(w.device())?
        };
        let input = if w.device() == Device::Cpu && cpu_channels_last(cfg) {
            ops::channels_last(&input)?
        } else {
            input
        };
        let groups = if grouped { c.groups / n } else { c.groups };
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
        let fuse = |x: &Tensor| ops::relu_lrn_max_pool2d(x, lrn, p.kernel, p.stride, p.ceil_mode);
        let h = per_tower(&parts[0], if c.lrn { l.groups } else { 1 }, &fuse)?;
        return Ok((Act(vec![h]), false));
    }
    let mut h = Act(parts);
    if report(observe, &c.name, Stage::Conv, &h)? {
        return Ok((h, true));
    }
    if c.lrn {
        h = lrn_stage(cfg, h)?;
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

/// Whether CPU convolutions take channels_last inputs (their weights stay NCHW, and so do the
/// weights' gradients). oneDNN's channels_last kernels are faster at ImageNet sizes (a training
/// step at 224x224: torchvision preset +5.5%, paper preset +4.7%) and slower on small images (the
/// demo's 63x63: -4%), BENCHMARKS.md; the cut at 128 lies between the measured sizes, untuned.
/// The fused relu -> LRN -> max-pool kernel reads and writes channels_last in place.
fn cpu_channels_last(cfg: &Config) -> bool {
    cfg.input_size >= 128
}

/// The config's non-linearity, in place (as torchvision's ReLU(inplace=True): no second
/// activation-sized allocation; tanh's backward reads its output, so in place is safe too).
fn activate(cfg: &Config, mut h: Tensor) -> Result<Tensor> {
    Ok(match cfg.activation {
        Activation::Relu => h.f_relu_()?,
        Activation::Tanh => h.f_tanh_()?,
    })
}

/// [dropout] -> linear -> [activation unless last]. Each device computes its slice of the outputs
/// from the whole input; the last layer is whole on the first device.
fn fc_stage(
    cfg: &Config,
    (layer, f): (usize, &FcLayer),
    params: &Params,
    x: Act,
    masks: Option<Masks>,
    update: Option<&InBackward>,
    last: bool,
) -> Result<Act> {
    let x = match masks {
        Some(m) if f.dropout_before => dropout(&x, cfg.dropout, m, layer)?,
        _ => x,
    };
    let weight = format!("{}.weight", f.name);
    let ws = params.shards(&weight)?;
    let bs = params.shards(&format!("{}.bias", f.name))?;
    let mut parts = Vec::with_capacity(ws.len());
    for (k, (w, b)) in ws.iter().zip(bs).enumerate() {
        let xk = x.gather(w.device())?;
        let h = match update {
            Some(u) => u.linear(&weight, k, &xk, w, b)?,
            None => xk.f_linear(w, Some(b))?,
        };
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
        let mut rng = Rng::for_sample(Rng::stream_seed(seed, (0xd0_u64 << 56) ^ layer as u64), step, s as u64);
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

#[cfg(test)]
mod tests {
    use super::keyed_mask;

    fn zeros(m: &tch::Tensor) -> f64 {
        m.eq(0.0)
            .to_kind(tch::Kind::Float)
            .mean(tch::Kind::Float)
            .double_value(&[])
    }

    #[test]
    fn keyed_masks_drop_a_fraction_p_independently_per_sample_step_and_layer() {
        let samples: Vec<usize> = (0..64).collect();
        let m = keyed_mask(0, 5, &samples, 1, 4096, 0.5).unwrap();
        assert!((zeros(&m) - 0.5).abs() < 0.01, "fraction dropped {}", zeros(&m));
        let kept = m.masked_select(&m.ne(0.0));
        assert!(
            kept.eq(2.0).all().int64_value(&[]) == 1,
            "kept units are scaled by 1/(1-p)"
        );
        // Two masks agree on about half their units when independent (1/2 x 1/2 + 1/2 x 1/2).
        let agree = |a: &tch::Tensor, b: &tch::Tensor| {
            a.eq_tensor(b)
                .to_kind(tch::Kind::Float)
                .mean(tch::Kind::Float)
                .double_value(&[])
        };
        let rows = agree(&m.get(0), &m.get(1));
        let steps = agree(&m, &keyed_mask(0, 6, &samples, 1, 4096, 0.5).unwrap());
        let layers = agree(&m, &keyed_mask(0, 5, &samples, 2, 4096, 0.5).unwrap());
        let seeds = agree(&m, &keyed_mask(1, 5, &samples, 1, 4096, 0.5).unwrap());
        // Seed and layer must not alias: (seed 0, layer 1) against (seed 1, layer 0).
        let swapped = agree(&m, &keyed_mask(1, 5, &samples, 0, 4096, 0.5).unwrap());
        for (what, a) in [
            ("samples", rows),
            ("steps", steps),
            ("layers", layers),
            ("seeds", seeds),
            ("(seed, layer) pairs", swapped),
        ] {
            assert!((a - 0.5).abs() < 0.03, "masks of different {what} agree on {a}");
        }
        // The same key gives the same mask, whatever else is in the batch.
        let one = keyed_mask(0, 5, &samples[7..8], 1, 4096, 0.5).unwrap();
        assert!(one.get(0).equal(&m.get(7)));
        let p = keyed_mask(0, 5, &samples, 1, 4096, 0.1).unwrap();
        assert!((zeros(&p) - 0.1).abs() < 0.01, "p = 0.1 drops {}", zeros(&p));
    }
}
