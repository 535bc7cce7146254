//! `alexnet info`: each layer's output shape, parameter count and multiply-accumulates,
//! computed from the config alone (tests check them against a real forward pass).
use crate::config::{conv_out, pool_out, Activation, Config};
use crate::error::Result;
use crate::model::Stage;
use std::fmt::{self, Write};

/// What a stage of the network does, as data: the layer list every reader walks (`alexnet info`,
/// the ONNX writer, `print(model)`, activations by name). Serialised with a `kind` tag.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    Input,
    /// Convolution + bias, then the activation.
    Conv {
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        groups: i64,
        activation: Activation,
    },
    /// Cross-channel LRN (PyTorch's convention: alpha is divided by size), within each of
    /// `groups` channel groups.
    Lrn {
        size: i64,
        alpha: f64,
        beta: f64,
        k: f64,
        groups: i64,
    },
    MaxPool {
        kernel: i64,
        stride: i64,
        ceil_mode: bool,
    },
    AdaptiveAvgPool {
        size: i64,
    },
    /// [dropout] -> linear (over the flattened input) -> [activation]; the last has none.
    Fc {
        in_features: i64,
        out_features: i64,
        dropout: Option<f64>,
        activation: Option<Activation>,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input => write!(f, "image"),
            Op::Conv {
                kernel,
                stride,
                padding,
                groups,
                activation,
                ..
            } => {
                write!(f, "conv {kernel}x{kernel}/{stride} pad {padding}")?;
                if *groups > 1 {
                    write!(f, " groups {groups}")?;
                }
                write!(f, " +{}", activation.name())
            }
            Op::Lrn {
                size,
                alpha,
                beta,
                k,
                groups,
            } => {
                write!(f, "lrn size {size} alpha {alpha} beta {beta} k {k}")?;
                if *groups > 1 {
                    write!(f, " groups {groups}")?;
                }
                Ok(())
            }
            Op::MaxPool {
                kernel,
                stride,
                ceil_mode,
            } => write!(
                f,
                "maxpool {kernel}x{kernel}/{stride}{}",
                if *ceil_mode { " ceil" } else { "" }
            ),
            Op::AdaptiveAvgPool { size } => write!(f, "adaptive avgpool {size}x{size}"),
            Op::Fc {
                in_features,
                out_features,
                dropout,
                activation,
            } => {
                if let Some(p) = dropout {
                    write!(f, "dropout {p} + ")?;
                }
                write!(f, "fc {in_features}->{out_features}")?;
                if let Some(a) = activation {
                    write!(f, " +{}", a.name())?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerRow {
    /// The layer's parameter prefix, or a stage name (`conv1.lrn`, `conv1.pool`, `avgpool`).
    pub name: String,
    pub op: Op,
    /// Output shape of one sample: `[C, H, W]` or `[F]`.
    pub out_shape: Vec<i64>,
    pub params: i64,
    /// Multiply-accumulates per image.
    pub macs: i64,
}

/// The rows of the network for a square `input` x `input` image, in forward order.
pub fn layer_table(cfg: &Config, input: i64) -> Result<Vec<LayerRow>> {
    cfg.spatial_sizes(input)?; // errors if the input is too small
    let row = |name: String, op: Op, out_shape: Vec<i64>| LayerRow {
        name,
        op,
        out_shape,
        params: 0,
        macs: 0,
    };
    let mut rows = vec![row("input".into(), Op::Input, vec![cfg.in_channels, input, input])];
    let (mut ch, mut side) = (cfg.in_channels, input);
    for c in &cfg.convs {
        let out = conv_out(side, c.kernel, c.stride, c.padding);
        let per_out = (ch / c.groups) * c.kernel * c.kernel;
        let op = Op::Conv {
            in_channels: ch,
            out_channels: c.out_channels,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            groups: c.groups,
            activation: cfg.activation,
        };
        rows.push(LayerRow {
            params: c.out_channels * per_out + c.out_channels,
            macs: c.out_channels * out * out * per_out,
            ..row(c.name.clone(), op, vec![c.out_channels, out, out])
        });
        (ch, side) = (c.out_channels, out);
        if c.lrn {
            let p = cfg.lrn;
            let op = Op::Lrn {
                size: p.size,
                alpha: p.alpha,
                beta: p.beta,
                k: p.k,
                groups: p.groups,
            };
            rows.push(row(Stage::Lrn.label(&c.name), op, vec![ch, side, side]));
        }
        if c.pool {
            side = pool_out(side, cfg.pool);
            let p = cfg.pool;
            let op = Op::MaxPool {
                kernel: p.kernel,
                stride: p.stride,
                ceil_mode: p.ceil_mode,
            };
            rows.push(row(Stage::Pool.label(&c.name), op, vec![ch, side, side]));
        }
    }
    if let Some(size) = cfg.adaptive_pool {
        side = size;
        rows.push(row(
            Stage::AdaptivePool.label(""),
            Op::AdaptiveAvgPool { size },
            vec![ch, side, side],
        ));
    }
    let mut in_f = ch * side * side;
    let last = cfg.fcs.len() - 1;
    for (i, f) in cfg.fcs.iter().enumerate() {
        let op = Op::Fc {
            in_features: in_f,
            out_features: f.out_features,
            dropout: f.dropout_before.then_some(cfg.dropout),
            activation: (i != last).then_some(cfg.activation),
        };
        rows.push(LayerRow {
            params: in_f * f.out_features + f.out_features,
            macs: in_f * f.out_features,
            ..row(f.name.clone(), op, vec![f.out_features])
        });
        in_f = f.out_features;
    }
    Ok(rows)
}

/// Thousands separators: 60965224 -> "60,965,224".
pub fn group_digits(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The table `alexnet info` prints.
pub fn render(cfg: &Config, input: i64) -> Result<String> {
    let rows = layer_table(cfg, input)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} preset `{}` ({} classes), input 3x{input}x{input}",
        if cfg.preset == crate::Preset::Cnn4 {
            "Fig. 1 CNN"
        } else {
            "AlexNet"
        },
        cfg.preset,
        cfg.num_classes()
    );
    // As wide as the longest name (torchvision's `features.10.pool` overflowed 14).
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(14);
    let _ = writeln!(
        s,
        "{:<w$} {:<44} {:>16} {:>12} {:>15}",
        "layer", "op", "output", "params", "MACs"
    );
    for r in &rows {
        let shape = r.out_shape.iter().map(i64::to_string).collect::<Vec<_>>().join("x");
        let _ = writeln!(
            s,
            "{:<w$} {:<44} {:>16} {:>12} {:>15}",
            r.name,
            r.op.to_string(),
            shape,
            group_digits(r.params),
            group_digits(r.macs)
        );
    }
    let params: i64 = rows.iter().map(|r| r.params).sum();
    let macs: i64 = rows.iter().map(|r| r.macs).sum();
    let conv_macs: i64 = rows
        .iter()
        .filter(|r| matches!(r.op, Op::Conv { .. }))
        .map(|r| r.macs)
        .sum();
    let mut sides: Vec<i64> = rows
        .iter()
        .filter(|r| r.out_shape.len() == 3)
        .map(|r| r.out_shape[1])
        .collect();
    sides.dedup();
    let sides: Vec<String> = sides.iter().map(i64::to_string).collect();
    let _ = writeln!(s, "spatial sizes: {}", sides.join(" -> "));
    let _ = writeln!(s, "total parameters: {}", group_digits(params));
    let _ = writeln!(
        s,
        "total MACs per image: {} ({:.0} M; conv {:.0} M)",
        group_digits(macs),
        macs as f64 / 1e6,
        conv_macs as f64 / 1e6
    );
    Ok(s)
}
