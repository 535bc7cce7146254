//! Which convolution the model runs: ours (`alexnet_rs::grouped_conv2d`), stock (ATen/cuDNN), or
//! `auto`: on CUDA, time both once per shape and keep the faster (logged); on CPU our op *is*
//! ATen's convolution, so `auto` means stock there.
use crate::error::{Error, Result};
use crate::ops;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvBackend {
    /// Our op (CUDA: our implicit-GEMM kernels; CPU: ATen).
    Ours,
    /// ATen's convolution (cuDNN on CUDA).
    Stock,
    /// The faster of the two per shape on CUDA (timed once); stock on CPU.
    #[default]
    Auto,
}

impl ConvBackend {
    pub const ALL: [ConvBackend; 3] = [ConvBackend::Ours, ConvBackend::Stock, ConvBackend::Auto];

    pub fn name(self) -> &'static str {
        match self {
            ConvBackend::Ours => "ours",
            ConvBackend::Stock => "stock",
            ConvBackend::Auto => "auto",
        }
    }
}

impl fmt::Display for ConvBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ConvBackend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ConvBackend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown conv backend `{s}` (choose one of: ours, stock, auto)")))
    }
}

/// A convolution's arguments, minus the tensors' values.
#[derive(Clone, Copy)]
pub struct ConvArgs {
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
}

/// Runs the convolution with `backend`.
pub fn conv2d(backend: ConvBackend, x: &Tensor, w: &Tensor, b: &Tensor, a: ConvArgs) -> Result<Tensor> {
    let use_ours = match backend {
        ConvBackend::Ours => true,
        ConvBackend::Stock => false,
        ConvBackend::Auto => matches!(x.device(), Device::Cuda(_)) && auto_prefers_ours(x, w, b, a)?,
    };
    if use_ours {
        ops::grouped_conv2d(x, w, Some(b), [a.stride; 2], [a.padding; 2], a.groups)
    } else {
        Ok(x.f_conv2d(w, Some(b), [a.stride; 2], [a.padding; 2], [1, 1], a.groups)?)
    }
}

/// What a timed choice holds for: the shapes, the convolution's arguments, the dtype it computes
/// in (autocast's, where it is on: a float32 input is convolved in bfloat16 then), the input's
/// memory format (channels_last or not), the device, and whether the backward passes run too.
type ShapeKey = (Vec<i64>, Vec<i64>, i64, i64, i64, String, bool, String, bool);

/// Times both convolutions (3 runs each after a warm-up, device synchronised) the first time a
/// shape is seen, and remembers the winner. Where autograd records (training), a run is the
/// forward and the backward passes training runs (input gradient only if the input needs one):
/// a backend fast forward and slow backward lost there.
fn auto_prefers_ours(x: &Tensor, w: &Tensor, b: &Tensor, a: ConvArgs) -> Result<bool> {
    static CHOICES: OnceLock<Mutex<HashMap<ShapeKey, bool>>> = OnceLock::new();
    let train = ops::grad_enabled() && (x.requires_grad() || w.requires_grad() || b.requires_grad());
    let computes_in = match ops::autocast_dtype(true) {
        // c10::ScalarType: 15 BFloat16, 5 Half.
        Some(t) if x.kind() == tch::Kind::Float => match t {
            15 => "BFloat16 (autocast)".to_string(),
            5 => "Half (autocast)".to_string(),
            t => format!("ScalarType {t} (autocast)"),
        },
        _ => format!("{:?}", x.kind()),
    };
    let key: ShapeKey = (
        x.size(),
        w.size(),
        a.stride,
        a.padding,
        a.groups,
        computes_in,
        ops::is_channels_last(x),
        format!("{:?}", x.device()),
        train,
    );
    let choices = CHOICES.get_or_init(Default::default);
    if let Some(&ours) = choices.lock().expect("conv choice cache").get(&key) {
        return Ok(ours);
    }
    let Device::Cuda(index) = x.device() else {
        return Ok(false);
    };
    // Fresh leaves of the same values each run (no gradient accumulated into the last run's),
    // needing the gradients the real tensors need.
    let leaf = |t: &Tensor| t.detach().f_requires_grad_(train && t.requires_grad());
    let run = |backend| -> Result<()> {
        let y = conv2d(backend, &leaf(x)?, &leaf(w)?, &leaf(b)?, a)?;
        if train {
            y.f_sum(y.kind())?.f_backward()?;
        }
        Ok(())
    };
    let time = |backend| -> Result<f64> {
        run(backend)?;
        tch::Cuda::synchronize(index as i64);
        let t0 = Instant::now();
        for _ in 0..3 {
            run(backend)?;
        }
        tch::Cuda::synchronize(index as i64);
        Ok(t0.elapsed().as_secs_f64() / 3.0)
    };
    let (t_ours, t_stock) = (time(ConvBackend::Ours)?, time(ConvBackend::Stock)?);
    let ours = t_ours < t_stock;
    crate::say::line(&format!(
        "conv backend auto: x {:?} w {:?} groups {} {}{}{}: ours {:.3} ms, stock {:.3} ms -> {}",
        key.0,
        key.1,
        a.groups,
        key.5,
        if key.6 { " channels_last" } else { "" },
        if train { ", forward + backward" } else { ", forward" },
        t_ours * 1e3,
        t_stock * 1e3,
        if ours { "ours" } else { "stock" }
    ));
    choices.lock().expect("conv choice cache").insert(key, ours);
    Ok(ours)
}
