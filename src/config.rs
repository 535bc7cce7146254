//! The three AlexNet variants (and the paper's Fig. 1 `cnn4`) as data: one [`Config`] type, four
//! presets.
//!
//! Numbers from ../shared/ALEXNET.md: Krizhevsky, Sutskever & Hinton (2012) and the original
//! code's `layers-145.cfg` for `paper`; torchvision's `alexnet.py` ("One weird trick",
//! Krizhevsky 2014) for `torchvision`; Caffe's `models/bvlc_alexnet/train_val.prototxt` for `caffe`.
//!
//! | layer | paper                   | torchvision        | caffe                     |
//! |-------|-------------------------|--------------------|---------------------------|
//! | conv1 | 96, 11x11/4, pad 2, LRN | 64, 11x11/4, pad 2 | 96, 11x11/4, pad 0, LRN   |
//! | conv2 | 256, 5x5, groups 2, LRN | 192, 5x5           | 256, 5x5, group 2, LRN    |
//! | conv3 | 384, 3x3                | 384                | 384                       |
//! | conv4 | 384, 3x3, groups 2      | 256                | 384, group 2              |
//! | conv5 | 256, 3x3, groups 2      | 256                | 256, group 2              |
//! | pool  | 3x3/2 after 1, 2, 5     | same + avgpool 6x6 | same, ceil mode           |
//! | head  | fc 4096-4096-classes, dropout after fc6/fc7 | dropout before fc6/fc7 | as paper |
//!
//! LRN of `paper` normalises each tower's channels apart (48 + 48 in conv1, 128 + 128 in conv2),
//! as each of the two GPUs did; `caffe` (one GPU) normalises across all of them.
//!
//! conv1 of `paper`: cuda-convnet sizes outputs as `1 + ceil((2p + img - f) / s)`, which gives 55
//! from a 224 crop with no padding. PyTorch floors, so we pad 2 (as torchvision does): 224 -> 55
//! -> 27 -> 13 -> 6. Same parameter count and output sizes; the taps sit two pixels further
//! left/up than cuda-convnet's.
use crate::conv::ConvBackend;
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The largest input side a network is built for (a square of it is within the pixel limit of
/// [`crate::image::MAX_PIXELS`]); far larger ones overflowed the first FC layer's size.
pub const MAX_INPUT: i64 = 8192;

/// The most classes a network may have (and a list file may label: a label is a class index).
pub const MAX_CLASSES: i64 = 1_000_000;

/// Which variant of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The 2012 two-tower network (groups 2, LRN k=2, overlapping pooling).
    Paper,
    /// torchvision's AlexNet ("One weird trick"): state_dict keys match torchvision's.
    Torchvision,
    /// Caffe's BVLC AlexNet (LRN k=1, 227 input, ceil-mode pooling).
    Caffe,
    /// Not an AlexNet: the four-layer CNN of the paper's Fig. 1 (ReLU versus tanh), shaped like
    /// cuda-convnet's CIFAR-10 `layers-18pct` (three 5x5 conv + pool stages, one linear layer)
    /// without its response normalisation, so that only the non-linearity differs.
    Cnn4,
}

impl Preset {
    /// The three AlexNets.
    pub const ALL: [Preset; 3] = [Preset::Paper, Preset::Torchvision, Preset::Caffe];
    /// Everything `--preset` accepts: the AlexNets and the Fig. 1 network.
    pub const CHOICES: [Preset; 4] = [Preset::Paper, Preset::Torchvision, Preset::Caffe, Preset::Cnn4];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Paper => "paper",
            Preset::Torchvision => "torchvision",
            Preset::Caffe => "caffe",
            Preset::Cnn4 => "cnn4",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Preset::CHOICES.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            Error::Config(format!(
                "unknown preset `{s}` (choose one of: paper, torchvision, caffe, cnn4)"
            ))
        })
    }
}

/// Cross-channel LRN parameters (PyTorch convention: alpha is divided by `size`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LrnParams {
    pub size: i64,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
    /// Channel groups normalised apart, each over its own channels: 2 in the paper's network,
    /// where each GPU normalised its own half of the kernel maps (CHM `layers-145.cfg`: `rnorm1a`
    /// over `conv1a`'s 48 channels, `rnorm2a` over `conv2a`'s 128); 1 (all channels) in Caffe's.
    pub groups: i64,
}

/// The non-linearity after every conv and hidden FC layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, x), the paper's choice (section 3.1).
    #[default]
    Relu,
    /// The saturating tanh the paper compares against (Fig. 1).
    Tanh,
}

impl Activation {
    pub const NAMES: [&'static str; 2] = ["relu", "tanh"];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
        }
    }
}

impl FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [Activation::Relu, Activation::Tanh]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown activation `{s}` (choose relu or tanh)")))
    }
}

/// How a layer's weight and bias start.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Init {
    /// Weight ~ N(0, std^2), bias = constant (the paper's and Caffe's scheme).
    Normal { std: f64, bias: f64 },
    /// PyTorch's defaults for Conv2d/Linear: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    TorchDefault,
}

/// One convolution stage: conv -> activation -> [LRN] -> [max pool].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConvLayer {
    /// Parameter prefix: `<name>.weight`, `<name>.bias`.
    pub name: String,
    pub out_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    pub lrn: bool,
    pub pool: bool,
    pub init: Init,
}

/// One fully connected layer: [dropout] -> linear -> [activation unless last].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FcLayer {
    pub name: String,
    pub out_features: i64,
    pub dropout_before: bool,
    pub init: Init,
}

/// Max pooling after the conv stages that ask for it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Pool {
    pub kernel: i64,
    pub stride: i64,
    /// Caffe sizes pooling outputs with ceil instead of floor.
    pub ceil_mode: bool,
}

/// A whole network, as data.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    pub preset: Preset,
    pub in_channels: i64,
    /// The input side the preset was designed for (224, or 227 for Caffe).
    pub input_size: i64,
    pub convs: Vec<ConvLayer>,
    pub lrn: LrnParams,
    pub pool: Pool,
    /// torchvision's AdaptiveAvgPool2d((6, 6)) before the head.
    pub adaptive_pool: Option<i64>,
    pub fcs: Vec<FcLayer>,
    pub dropout: f64,
    pub activation: Activation,
    /// Which convolution implementation runs the conv layers (not part of the architecture).
    #[serde(skip)]
    pub conv_backend: ConvBackend,
}

fn conv(name: &str, out: i64, kernel: i64, stride: i64, padding: i64, groups: i64, init: Init) -> ConvLayer {
    ConvLayer {
        name: name.into(),
        out_channels: out,
        kernel,
        stride,
        padding,
        groups,
        lrn: false,
        pool: false,
        init,
    }
}

fn fc(name: &str, out: i64, dropout_before: bool, init: Init) -> FcLayer {
    FcLayer {
        name: name.into(),
        out_features: out,
        dropout_before,
        init,
    }
}

fn n(std: f64, bias: f64) -> Init {
    Init::Normal { std, bias }
}

/// Followed by max pooling.
fn pooled(mut c: ConvLayer) -> ConvLayer {
    c.pool = true;
    c
}

/// Followed by LRN, then max pooling.
fn lrn_pooled(mut c: ConvLayer) -> ConvLayer {
    c.lrn = true;
    pooled(c)
}

/// What every preset shares, to be completed: LRN size 5, alpha 1e-4, beta 0.75 (only k
/// differs), overlapping 3x3/2 max pooling, dropout 0.5, ReLU.
fn network(preset: Preset, input_size: i64, convs: Vec<ConvLayer>, fcs: Vec<FcLayer>) -> Config {
    Config {
        preset,
        in_channels: 3,
        input_size,
        convs,
        lrn: LrnParams {
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 1.0,
            groups: 1,
        },
        pool: Pool {
            kernel: 3,
            stride: 2,
            ceil_mode: false,
        },
        adaptive_pool: None,
        fcs,
        dropout: 0.5,
        activation: Activation::Relu,
        conv_backend: ConvBackend::default(),
    }
}

/// Paper init (section 5): weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC
/// layers, 0 elsewhere. LRN k = 2, within each of the two towers.
fn paper(classes: i64) -> Config {
    let convs = vec![
        lrn_pooled(conv("conv1", 96, 11, 4, 2, 1, n(0.01, 0.0))),
        lrn_pooled(conv("conv2", 256, 5, 1, 2, 2, n(0.01, 1.0))),
        conv("conv3", 384, 3, 1, 1, 1, n(0.01, 0.0)),
        conv("conv4", 384, 3, 1, 1, 2, n(0.01, 1.0)),
        pooled(conv("conv5", 256, 3, 1, 1, 2, n(0.01, 1.0))),
    ];
    let fcs = vec![
        fc("fc6", 4096, false, n(0.01, 1.0)),
        fc("fc7", 4096, true, n(0.01, 1.0)),
        fc("fc8", classes, true, n(0.01, 0.0)),
    ];
    let mut cfg = network(Preset::Paper, 224, convs, fcs);
    (cfg.lrn.k, cfg.lrn.groups) = (2.0, 2);
    cfg
}

/// torchvision's keys verbatim: features.{0,3,6,8,10}, classifier.{1,4,6}; PyTorch's init.
fn torchvision(classes: i64) -> Config {
    let d = Init::TorchDefault;
    let convs = vec![
        pooled(conv("features.0", 64, 11, 4, 2, 1, d)),
        pooled(conv("features.3", 192, 5, 1, 2, 1, d)),
        conv("features.6", 384, 3, 1, 1, 1, d),
        conv("features.8", 256, 3, 1, 1, 1, d),
        pooled(conv("features.10", 256, 3, 1, 1, 1, d)),
    ];
    let fcs = vec![
        fc("classifier.1", 4096, true, d),
        fc("classifier.4", 4096, true, d),
        fc("classifier.6", classes, false, d),
    ];
    Config {
        adaptive_pool: Some(6),
        ..network(Preset::Torchvision, 224, convs, fcs)
    }
}

/// BVLC train_val.prototxt: std 0.01 (fc6/fc7 0.005); bias 0.1 on conv2, conv4, conv5, fc6, fc7
/// and 0 on conv1, conv3, fc8; ceil-mode pooling.
fn caffe(classes: i64) -> Config {
    let convs = vec![
        lrn_pooled(conv("conv1", 96, 11, 4, 0, 1, n(0.01, 0.0))),
        lrn_pooled(conv("conv2", 256, 5, 1, 2, 2, n(0.01, 0.1))),
        conv("conv3", 384, 3, 1, 1, 1, n(0.01, 0.0)),
        conv("conv4", 384, 3, 1, 1, 2, n(0.01, 0.1)),
        pooled(conv("conv5", 256, 3, 1, 1, 2, n(0.01, 0.1))),
    ];
    let fcs = vec![
        fc("fc6", 4096, false, n(0.005, 0.1)),
        fc("fc7", 4096, true, n(0.005, 0.1)),
        fc("fc8", classes, true, n(0.01, 0.0)),
    ];
    let mut cfg = network(Preset::Caffe, 227, convs, fcs);
    cfg.pool.ceil_mode = true;
    cfg
}

/// layers-18pct.cfg: conv 32-32-64, 5x5 pad 2, each followed by a 3x3/2 pool, then the
/// classifier. PyTorch's default init and no dropout ("no regularization of any kind").
fn cnn4(classes: i64) -> Config {
    let d = Init::TorchDefault;
    let convs = vec![
        pooled(conv("conv1", 32, 5, 1, 2, 1, d)),
        pooled(conv("conv2", 32, 5, 1, 2, 1, d)),
        pooled(conv("conv3", 64, 5, 1, 2, 1, d)),
    ];
    Config {
        dropout: 0.0,
        ..network(Preset::Cnn4, 32, convs, vec![fc("fc4", classes, false, d)])
    }
}

impl Config {
    /// The preset's network with a `num_classes`-way last layer (1000 for ImageNet).
    pub fn preset(preset: Preset, num_classes: i64) -> Result<Config> {
        if !(1..=MAX_CLASSES).contains(&num_classes) {
            return Err(Error::Config(format!(
                "num_classes must be in 1..={MAX_CLASSES}, got {num_classes}"
            )));
        }
        Ok(match preset {
            Preset::Paper => paper(num_classes),
            Preset::Torchvision => torchvision(num_classes),
            Preset::Caffe => caffe(num_classes),
            Preset::Cnn4 => cnn4(num_classes),
        })
    }

    /// Every parameter's name and shape, in network order (weight then bias, layer by layer).
    pub fn param_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        let mut in_c = self.in_channels;
        for c in &self.convs {
            let w = vec![c.out_channels, in_c / c.groups, c.kernel, c.kernel];
            out.push((format!("{}.weight", c.name), w));
            out.push((format!("{}.bias", c.name), vec![c.out_channels]));
            in_c = c.out_channels;
        }
        let mut in_f = in_c * self.feature_side(self.input_size).unwrap_or(6).pow(2);
        for f in &self.fcs {
            out.push((format!("{}.weight", f.name), vec![f.out_features, in_f]));
            out.push((format!("{}.bias", f.name), vec![f.out_features]));
            in_f = f.out_features;
        }
        out
    }

    pub fn num_params(&self) -> i64 {
        self.param_shapes().iter().map(|(_, s)| s.iter().product::<i64>()).sum()
    }

    pub fn num_classes(&self) -> i64 {
        self.fcs.last().map_or(0, |f| f.out_features)
    }

    /// The side of the feature map the head reads, for a square input of side `input`.
    pub fn feature_side(&self, input: i64) -> Result<i64> {
        if let Some(side) = self.adaptive_pool {
            // Still check that every conv/pool stage has a non-empty output.
            self.spatial_sizes(input)?;
            return Ok(side);
        }
        Ok(*self.spatial_sizes(input)?.last().expect("a preset has conv stages"))
    }

    /// Spatial side after each conv stage (after its pool, if any), for a square input (at most
    /// [`MAX_INPUT`]).
    pub fn spatial_sizes(&self, input: i64) -> Result<Vec<i64>> {
        if input > MAX_INPUT {
            return Err(Error::Config(format!(
                "input size {input} is over the limit of {MAX_INPUT} pixels (the largest image the data \
                 pipeline decodes is {MAX_INPUT}x{MAX_INPUT})"
            )));
        }
        let mut side = input;
        let mut out = Vec::with_capacity(self.convs.len());
        for c in &self.convs {
            side = conv_out(side, c.kernel, c.stride, c.padding);
            if side < 1 {
                return Err(Error::Config(format!(
                    "input size {input} is too small: {} would have no output pixels",
                    c.name
                )));
            }
            if c.pool {
                side = pool_out(side, self.pool);
                if side < 1 {
                    return Err(Error::Config(format!(
                        "input size {input} is too small for the {k}x{k} max pool after {}: it would have \
                         no output (a pool_kernel of {k}, or the input size, is the culprit)",
                        c.name,
                        k = self.pool.kernel
                    )));
                }
            }
            out.push(side);
        }
        Ok(out)
    }
}

/// PyTorch's (floor) convolution output size.
pub fn conv_out(input: i64, kernel: i64, stride: i64, padding: i64) -> i64 {
    (input + 2 * padding - kernel).div_euclid(stride) + 1
}

/// PyTorch's max-pool output size (padding 0; 0 where it has none), including its ceil-mode
/// rules: a window may hang over the input's end (a 2x2 map pools to 1x1 under a 3x3 window, as
/// in PyTorch and Caffe), but the last one must start inside the input.
pub fn pool_out(input: i64, p: Pool) -> i64 {
    let span = input - p.kernel;
    let mut out = if p.ceil_mode {
        (span + p.stride - 1).div_euclid(p.stride) + 1
    } else {
        span.div_euclid(p.stride) + 1
    };
    if p.ceil_mode && (out - 1) * p.stride >= input {
        out -= 1;
    }
    out.max(0)
}
