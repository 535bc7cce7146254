//! The LRN stage over activations in channel slices (one per device): across all channels, or
//! within each tower of the paper's network.
use super::Act;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops;
use tch::Tensor;

/// `f` (an op whose window runs along the channels: LRN, or relu -> LRN -> max-pool) of each of
/// `towers` equal channel groups of `t` (N, C, H, W) alone. Stored NCHW: one call on the view
/// (N * towers, C / towers, H, W), no copy; otherwise (channels_last) each tower is copied dense
/// in that layout (what the fused op reads), and the results joined.
pub(super) fn per_tower(t: &Tensor, towers: i64, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if towers == 1 {
        return f(t);
    }
    let s = t.size();
    if t.is_contiguous() {
        let y = f(&t.f_view([s[0] * towers, s[1] / towers, s[2], s[3]])?)?;
        let ys = y.size();
        return Ok(y.f_reshape([s[0], s[1], ys[2], ys[3]])?);
    }
    let parts = t
        .f_chunk(towers, 1)?
        .iter()
        .map(|g| f(&ops::channels_last(g)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_cat(&parts, 1)?)
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
    h.map(|t| per_tower(t, p.groups / slices, &|g| ops::lrn(g, p.size, p.alpha, p.beta, p.k)))
}

/// LRN over channel slices: each slice borrows the `size/2` channels before it and the
/// `(size-1)/2` after it from its neighbours (from as many as it takes: a slice may be narrower
/// than the window), so the result equals LRN over all channels.
fn lrn_sharded(cfg: &Config, h: &Act) -> Result<Act> {
    let p = cfg.lrn;
    let (pre, post) = (p.size / 2, (p.size - 1) / 2);
    let mut out = Vec::with_capacity(h.0.len());
    for (k, own) in h.0.iter().enumerate() {
        let dev = own.device();
        // The channels before the slice, nearest first, then put in order.
        let mut pieces = Vec::new();
        let mut need = pre;
        for t in h.0[..k].iter().rev() {
            if need == 0 {
                break;
            }
            let take = need.min(t.size()[1]);
            pieces.push(t.f_narrow(1, t.size()[1] - take, take)?.to_device(dev));
            need -= take;
        }
        pieces.reverse();
        let offset: i64 = pieces.iter().map(|t| t.size()[1]).sum();
        pieces.push(own.shallow_clone());
        let mut need = post;
        for t in &h.0[k + 1..] {
            if need == 0 {
                break;
            }
            let take = need.min(t.size()[1]);
            pieces.push(t.f_narrow(1, 0, take)?.to_device(dev));
            need -= take;
        }
        let y = if pieces.len() == 1 {
            ops::lrn(own, p.size, p.alpha, p.beta, p.k)?
        } else {
            ops::lrn(&Tensor::f_cat(&pieces, 1)?, p.size, p.alpha, p.beta, p.k)?.f_narrow(1, offset, own.size()[1])?
        };
        out.push(y);
    }
    Ok(Act(out))
}
