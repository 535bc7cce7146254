//! AlexNet: parameters by name, and the one functional forward pass every caller uses (the Rust
//! CLI and trainer, the Python `nn.Module`, the two-device placement).
//!
//! The forward takes a [`Config`] and a [`Params`] map (name -> tensor) and builds nothing: the
//! caller owns the parameters (a tch `VarStore`, or a Python module's `nn.Parameter`s), so the
//! autograd graph links back to whichever side created them.
use crate::config::{Config, ConvLayer, FcLayer, Init};
use crate::conv::{self, ConvArgs};
use crate::error::{Error, Result};
use crate::ops;
use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

/// Named parameters (`conv1.weight`, `features.0.bias`, ...). Tensors are shallow handles: they
/// share storage and autograd identity with whoever owns them.
#[derive(Debug, Default)]
pub struct Params {
    map: BTreeMap<String, Tensor>,
}

impl Params {
    pub fn new(map: BTreeMap<String, Tensor>) -> Self {
        Params { map }
    }

    /// Handles to every trainable variable of a `VarStore`.
    pub fn from_varstore(vs: &nn::VarStore) -> Self {
        Params::new(vs.variables().into_iter().collect())
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.map.get(name).ok_or_else(|| {
            let present: Vec<&str> = self.map.keys().map(String::as_str).collect();
            Error::MissingParam(name.to_string(), present.join(", "))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    /// Checks that every parameter the config names is present with the right shape.
    pub fn check(&self, cfg: &Config) -> Result<()> {
        for (name, shape) in cfg.param_shapes() {
            let t = self.get(&name)?;
            if t.size() != shape {
                return Err(Error::Shape(format!(
                    "parameter `{name}` has shape {:?}, the {} preset expects {shape:?}",
                    t.size(),
                    cfg.preset
                )));
            }
        }
        Ok(())
    }
}

/// Creates the config's parameters under `root` (float32, on the VarStore's device), initialised
/// as the preset says, and returns handles to them.
pub fn init_params(cfg: &Config, root: &nn::Path) -> Result<Params> {
    let mut map = BTreeMap::new();
    let inits = cfg.convs.iter().map(|c| c.init).chain(cfg.fcs.iter().map(|f| f.init));
    for (pair, init) in cfg.param_shapes().chunks(2).zip(inits) {
        let ((wname, wshape), (bname, bshape)) = (&pair[0], &pair[1]);
        let (w_init, b_init) = match init {
            Init::Normal { std, bias } => (nn::Init::Randn { mean: 0.0, stdev: std }, nn::Init::Const(bias)),
            Init::TorchDefault => {
                // kaiming_uniform_(a=sqrt(5)) and the bias rule of nn.Conv2d/nn.Linear both give
                // U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                let fan_in: i64 = wshape[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                let u = nn::Init::Uniform { lo: -bound, up: bound };
                (u, u)
            }
        };
        for (name, shape, init) in [(wname, wshape, w_init), (bname, bshape, b_init)] {
            map.insert(name.clone(), var_at(root, name, shape, init)?);
        }
    }
    Ok(Params::new(map))
}

/// Creates `features.0.weight` as variable `weight` under the sub-path `features / 0` (tch
/// forbids dots in a variable's own name), so VarStore names equal our parameter names.
fn var_at(root: &nn::Path, name: &str, shape: &[i64], init: nn::Init) -> Result<Tensor> {
    let parts: Vec<&str> = name.split('.').collect();
    let (leaf, dirs) = parts.split_last().expect("non-empty name");
    let mut path: Option<nn::Path> = None;
    for d in dirs {
        path = Some(match &path {
            None => root.sub(*d),
            Some(p) => p.sub(*d),
        });
    }
    Ok(path.as_ref().unwrap_or(root).f_var(leaf, shape, init)?)
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

/// The forward pass: logits `(N, classes)` for images `(N, 3, H, W)`. `train` turns dropout on.
pub fn forward(cfg: &Config, params: &Params, x: &Tensor, train: bool) -> Result<Tensor> {
    forward_with(cfg, params, x, train, &mut |_, _, _| {})
}

/// [`forward`], calling `observe(layer name, stage, output)` after every stage.
pub fn forward_with(
    cfg: &Config,
    params: &Params,
    x: &Tensor,
    train: bool,
    observe: &mut dyn FnMut(&str, Stage, &Tensor),
) -> Result<Tensor> {
    check_input(cfg, x)?;
    let mut h = x.shallow_clone();
    for c in &cfg.convs {
        h = conv_stage(cfg, c, params, &h, observe)?;
    }
    if let Some(side) = cfg.adaptive_pool {
        h = h.f_adaptive_avg_pool2d([side, side])?;
        observe("avgpool", Stage::AdaptivePool, &h);
    }
    h = h.f_flatten(1, -1)?;
    let in_features = cfg.fcs[0].name.as_str();
    let expected = params.get(&format!("{in_features}.weight"))?.size()[1];
    if h.size()[1] != expected {
        return Err(Error::Shape(format!(
            "input of {}x{} pixels gives {} features, but {in_features} expects {expected}: \
             the {} preset needs {}x{} inputs",
            x.size()[2],
            x.size()[3],
            h.size()[1],
            cfg.preset,
            cfg.input_size,
            cfg.input_size
        )));
    }
    let last = cfg.fcs.len() - 1;
    for (i, f) in cfg.fcs.iter().enumerate() {
        h = fc_stage(cfg, f, params, &h, train, i == last)?;
        observe(&f.name, Stage::Fc, &h);
    }
    Ok(h)
}

/// conv -> ReLU -> [LRN] -> [max pool].
fn conv_stage(
    cfg: &Config,
    c: &ConvLayer,
    params: &Params,
    x: &Tensor,
    observe: &mut dyn FnMut(&str, Stage, &Tensor),
) -> Result<Tensor> {
    let w = params.get(&format!("{}.weight", c.name))?;
    let b = params.get(&format!("{}.bias", c.name))?;
    let args = ConvArgs {
        stride: c.stride,
        padding: c.padding,
        groups: c.groups,
    };
    let mut h = conv::conv2d(cfg.conv_backend, x, w, b, args)?.f_relu()?;
    observe(&c.name, Stage::Conv, &h);
    if c.lrn {
        let p = cfg.lrn;
        h = ops::lrn(&h, p.size, p.alpha, p.beta, p.k)?;
        observe(&c.name, Stage::Lrn, &h);
    }
    if c.pool {
        let p = cfg.pool;
        h = h.f_max_pool2d([p.kernel, p.kernel], [p.stride, p.stride], [0, 0], [1, 1], p.ceil_mode)?;
        observe(&c.name, Stage::Pool, &h);
    }
    Ok(h)
}

/// [dropout] -> linear -> [ReLU unless last].
fn fc_stage(cfg: &Config, f: &FcLayer, params: &Params, x: &Tensor, train: bool, last: bool) -> Result<Tensor> {
    let w = params.get(&format!("{}.weight", f.name))?;
    let b = params.get(&format!("{}.bias", f.name))?;
    let h = if f.dropout_before && train {
        x.f_dropout(cfg.dropout, true)?
    } else {
        x.shallow_clone()
    };
    let h = h.f_linear(w, Some(b))?;
    Ok(if last { h } else { h.f_relu()? })
}

fn check_input(cfg: &Config, x: &Tensor) -> Result<()> {
    let size = x.size();
    if size.len() != 4 || size[1] != cfg.in_channels {
        return Err(Error::Shape(format!(
            "input must be (N, {}, H, W) images, got a tensor of shape {size:?}",
            cfg.in_channels
        )));
    }
    if !matches!(x.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        return Err(Error::Dtype(format!(
            "input must be floating point, got dtype {:?}",
            x.kind()
        )));
    }
    // Every stage must keep at least one pixel (clear error instead of libtorch's).
    cfg.spatial_sizes(size[2])?;
    cfg.spatial_sizes(size[3])?;
    Ok(())
}
