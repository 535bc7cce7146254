//! The LRN stage over activations in channel slices (one per device): across all channels, or
//! within each tower of the paper's network.
use super::{cpu_channels_last, Act};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops;
use tch::{Device, Tensor};

/// `t` stored dense, NCHW or (where the CPU convolutions read it) channels_last.
pub(super) fn dense(cfg: &Config, t: &Tensor) -> Result<Tensor> {
    if t.device() == Device::Cpu && cpu_channels_last(cfg) {
        ops::channels_last(t)
    } else {
        Ok(t.f_contiguous()?)
    }
}

/// LRN of activations in equal channel slices (one per device) over the config's channel groups
/// (`cfg.lrn.groups`): across all channels, [`lrn_sharded`]; in towers, each slice holds whole
/// towers (the paper's two, on one device or one each on two) and normalises them alone: no
/// exchange between the devices, as in the paper.
pub(super) fn lrn_stage(cfg: &Config, h: Act) -> Result<Act> {
    let (p, slices) = (cfg.lrn, h.0.len() as i64);
    if p.groups == 1 {
        return lrn_sharded(cfg, &h);
    }
    if p.groups % slices != 0 {
        return Err(Error::Internal(format!(
            "{} LRN groups do not split over {slices} devices",
            p.groups
        )));
    }
    h.map(|t| {
        let towers = t
            .f_chunk(p.groups / slices, 1)?
            .iter()
            .map(|g| ops::lrn(g, p.size, p.alpha, p.beta, p.k))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_cat(&towers, 1)?)
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
