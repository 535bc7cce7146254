//! `alexnet info`: each layer's output shape, parameter count and multiply-accumulates,
//! computed from the config alone (tests check them against a real forward pass).
use crate::config::{conv_out, pool_out, Config};
use crate::error::Result;
use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    /// The layer's parameter prefix, or a stage name (`conv1.lrn`, `conv1.pool`, `avgpool`).
    pub name: String,
    /// What the stage does, e.g. `conv 11x11/4 pad 2 +relu`.
    pub op: String,
    /// Output shape of one sample: `[C, H, W]` or `[F]`.
    pub out_shape: Vec<i64>,
    pub params: i64,
    /// Multiply-accumulates per image.
    pub macs: i64,
}

/// The rows of the network for a square `input` x `input` image.
pub fn layer_table(cfg: &Config, input: i64) -> Result<Vec<LayerRow>> {
    cfg.spatial_sizes(input)?; // errors if the input is too small
    let mut rows = vec![LayerRow {
        name: "input".into(),
        op: "image".into(),
        out_shape: vec![cfg.in_channels, input, input],
        params: 0,
        macs: 0,
    }];
    let (mut ch, mut side) = (cfg.in_channels, input);
    for c in &cfg.convs {
        let out = conv_out(side, c.kernel, c.stride, c.padding);
        let per_out = (ch / c.groups) * c.kernel * c.kernel;
        let groups = if c.groups > 1 {
            format!(" groups {}", c.groups)
        } else {
            String::new()
        };
        rows.push(LayerRow {
            name: c.name.clone(),
            op: format!(
                "conv {k}x{k}/{} pad {}{groups} +{}",
                c.stride,
                c.padding,
                cfg.activation.name(),
                k = c.kernel
            ),
            out_shape: vec![c.out_channels, out, out],
            params: c.out_channels * per_out + c.out_channels,
            macs: c.out_channels * out * out * per_out,
        });
        (ch, side) = (c.out_channels, out);
        if c.lrn {
            let p = cfg.lrn;
            rows.push(LayerRow {
                name: format!("{}.lrn", c.name),
                op: format!("lrn size {} alpha {} beta {} k {}", p.size, p.alpha, p.beta, p.k),
                out_shape: vec![ch, side, side],
                params: 0,
                macs: 0,
            });
        }
        if c.pool {
            side = pool_out(side, cfg.pool);
            let p = cfg.pool;
            let ceil = if p.ceil_mode { " ceil" } else { "" };
            rows.push(LayerRow {
                name: format!("{}.pool", c.name),
                op: format!("maxpool {k}x{k}/{}{ceil}", p.stride, k = p.kernel),
                out_shape: vec![ch, side, side],
                params: 0,
                macs: 0,
            });
        }
    }
    if let Some(s) = cfg.adaptive_pool {
        side = s;
        rows.push(LayerRow {
            name: "avgpool".into(),
            op: format!("adaptive avgpool {s}x{s}"),
            out_shape: vec![ch, side, side],
            params: 0,
            macs: 0,
        });
    }
    let mut in_f = ch * side * side;
    let last = cfg.fcs.len() - 1;
    for (i, f) in cfg.fcs.iter().enumerate() {
        let drop = if f.dropout_before {
            format!("dropout {} + ", cfg.dropout)
        } else {
            String::new()
        };
        let act = if i == last {
            String::new()
        } else {
            format!(" +{}", cfg.activation.name())
        };
        rows.push(LayerRow {
            name: f.name.clone(),
            op: format!("{drop}fc {in_f}->{}{act}", f.out_features),
            out_shape: vec![f.out_features],
            params: in_f * f.out_features + f.out_features,
            macs: in_f * f.out_features,
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
        if i > 0 && (s.len() - i) % 3 == 0 {
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
    let _ = writeln!(
        s,
        "{:<14} {:<44} {:>16} {:>12} {:>15}",
        "layer", "op", "output", "params", "MACs"
    );
    for r in &rows {
        let shape = r.out_shape.iter().map(i64::to_string).collect::<Vec<_>>().join("x");
        let _ = writeln!(
            s,
            "{:<14} {:<44} {:>16} {:>12} {:>15}",
            r.name,
            r.op,
            shape,
            group_digits(r.params),
            group_digits(r.macs)
        );
    }
    let params: i64 = rows.iter().map(|r| r.params).sum();
    let macs: i64 = rows.iter().map(|r| r.macs).sum();
    let conv_macs: i64 = rows.iter().filter(|r| r.op.starts_with("conv")).map(|r| r.macs).sum();
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
