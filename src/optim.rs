//! SGD with momentum and weight decay, in the paper's form or PyTorch's, and the learning-rate
//! schedules. The paper's rule (section 5) keeps the learning rate inside the momentum sum:
//!
//!   paper:   v <- m v - wd lr w - lr g;   w <- w + v
//!   pytorch: v <- m v + (g + wd w);       w <- w - lr v
//!
//! The two agree while lr is constant and differ when it changes. Weight decay applies to
//! weights, not biases (cuda-convnet's `wc` is 0 for biases).
use crate::error::{Error, Result};
use crate::model::Params;
use std::cell::RefCell;
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateRule {
    Paper,
    Pytorch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Divide by 10 when the validation error stops improving (at most `max_drops` times).
    Plateau,
    /// Divide by 10 every `step_epochs` epochs.
    Step,
    /// Cosine from lr to 0 over the run.
    Cosine,
    Constant,
}

impl UpdateRule {
    pub const NAMES: [&'static str; 2] = ["paper", "pytorch"];
}

impl ScheduleKind {
    pub const NAMES: [&'static str; 4] = ["plateau", "step", "cosine", "constant"];
}

macro_rules! parse_enum {
    ($t:ty, $what:literal, $($name:literal => $v:expr),+) => {
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok($v),)+
                    _ => Err(Error::Config(format!(concat!("unknown ", $what, " `{}` (choose one of: ", $($name, " "),+, ")"), s))),
                }
            }
        }
    };
}
parse_enum!(UpdateRule, "update rule", "paper" => UpdateRule::Paper, "pytorch" => UpdateRule::Pytorch);
parse_enum!(ScheduleKind, "schedule", "plateau" => ScheduleKind::Plateau, "step" => ScheduleKind::Step,
            "cosine" => ScheduleKind::Cosine, "constant" => ScheduleKind::Constant);

pub struct Sgd {
    pub rule: UpdateRule,
    pub momentum: f64,
    pub weight_decay: f64,
    /// One velocity per parameter shard, in `Params::iter_shards` order.
    pub velocity: Vec<Tensor>,
}

impl Sgd {
    pub fn new(params: &Params, rule: UpdateRule, momentum: f64, weight_decay: f64) -> Sgd {
        let velocity = params.iter_shards().map(|(_, _, p)| p.zeros_like()).collect();
        Sgd {
            rule,
            momentum,
            weight_decay,
            velocity,
        }
    }

    /// The update of this step's fully connected weights, to be run inside backward: pass it to
    /// the forward ([`crate::model::forward_masked`]), run backward, then [`Sgd::step`] with it.
    /// The same rule and scalars as [`Sgd::step`].
    pub fn in_backward(&self, params: &Params, lr: f64) -> InBackward {
        InBackward {
            rule: self.rule,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            lr,
            velocity: params
                .iter_shards()
                .zip(&self.velocity)
                .map(|((name, i, _), v)| ((name.clone(), i), v.shallow_clone()))
                .collect(),
            done: RefCell::new(Vec::new()),
        }
    }

    /// One update with learning rate `lr` from the gradients in `params`, which are then
    /// dropped (float32 CPU parameters: one fused pass, kernels/sgd_cpu.cpp; the next backward
    /// hands over fresh gradients without accumulating into a zeroed buffer) or zeroed (other
    /// devices and dtypes: in-place ops, addcmul_ with 0-dim scale tensors, so no
    /// parameter-sized temporaries, which matter at fc6's 37.7 M weights).
    /// Parameters that `in_backward` updated during the backward are skipped.
    pub fn step(&mut self, params: &Params, lr: f64, in_backward: Option<&InBackward>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let done = in_backward.map(|u| u.done.take()).unwrap_or_default();
        for ((name, i, p), v) in params.iter_shards().zip(self.velocity.iter_mut()) {
            if !p.requires_grad() {
                continue; // frozen: never touched, weight decay included
            }
            if done.iter().any(|(n, k)| n == name && *k == i) {
                continue; // updated inside backward
            }
            let mut g = p.grad();
            if !g.defined() {
                return Err(Error::Config(format!("parameter `{name}` received no gradient")));
            }
            let wd = if name.ends_with(".weight") {
                self.weight_decay
            } else {
                0.0
            };
            if crate::ops::sgd_fused(p, v, lr, self.momentum, wd, self.rule == UpdateRule::Paper) {
                continue;
            }
            let scalar = |x: f64| Tensor::from(x as f32).to_kind(p.kind()).to_device(p.device());
            let mut w = p.shallow_clone();
            let _ = v.f_mul_scalar_(self.momentum)?;
            match self.rule {
                UpdateRule::Paper => {
                    // v = m v - wd lr w - lr g; w += v
                    if wd > 0.0 {
                        let _ = v.f_addcmul_(p, &scalar(-wd * lr))?;
                    }
                    let _ = v.f_addcmul_(&g, &scalar(-lr))?;
                    let _ = w.f_add_(v)?;
                }
                UpdateRule::Pytorch => {
                    // v = m v + g + wd w; w -= lr v
                    let _ = v.f_add_(&g)?;
                    if wd > 0.0 {
                        let _ = v.f_addcmul_(p, &scalar(wd))?;
                    }
                    let _ = w.f_addcmul_(v, &scalar(-lr))?;
                }
            }
            let _ = g.f_zero_()?;
        }
        Ok(())
    }
}

/// The SGD update of the fully connected weights done inside backward (kernels/linear_sgd_cpu.cpp):
/// their backward reads each weight matrix and its velocity once, forming the input's gradient
/// and updating both, instead of two GEMMs, a stored gradient and a separate update pass (at
/// small batches most of an FC layer's step time is those memory passes; BENCHMARKS.md). Only
/// where the tensors qualify ([`crate::ops::linear_sgd`]); other layers take [`Sgd::step`].
/// Single-process training only: a gradient that must be all-reduced first cannot be consumed
/// inside backward.
pub struct InBackward {
    rule: UpdateRule,
    momentum: f64,
    weight_decay: f64,
    lr: f64,
    velocity: Vec<((String, usize), Tensor)>,
    /// The (parameter, shard) handed to a fused layer by a forward: its backward updates it.
    done: RefCell<Vec<(String, usize)>>,
}

impl InBackward {
    /// `x.linear(w, b)` for shard `shard` of the weight named `weight`: with the update in its
    /// backward where the tensors qualify, else plain (and [`Sgd::step`] updates `w` as usual).
    pub fn linear(&self, weight: &str, shard: usize, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let v = self
            .velocity
            .iter()
            .find(|((n, i), _)| n == weight && *i == shard)
            .map(|(_, v)| v);
        if let Some(v) = v {
            let paper = self.rule == UpdateRule::Paper;
            if let Some(y) = crate::ops::linear_sgd(x, w, b, v, self.lr, self.momentum, self.weight_decay, paper)? {
                self.done.borrow_mut().push((weight.to_string(), shard));
                return Ok(y);
            }
        }
        Ok(x.f_linear(w, Some(b))?)
    }
}

/// The learning-rate schedule's state (saved in checkpoints).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub lr: f64,
    pub epochs: u64,
    pub step_epochs: u64,
    pub patience: u64,
    pub max_drops: u64,
    pub drops: u64,
    pub best_error: Option<f64>,
    pub bad_epochs: u64,
}

impl Schedule {
    /// A schedule before its first step (`step_epochs`: the `step` schedule's period;
    /// `patience`: the `plateau` schedule's evaluations without a new best before a drop).
    pub fn new(kind: ScheduleKind, base_lr: f64, epochs: u64, step_epochs: u64, patience: u64) -> Schedule {
        Schedule {
            kind,
            base_lr,
            lr: base_lr,
            epochs,
            step_epochs,
            patience,
            max_drops: 3,
            drops: 0,
            best_error: None,
            bad_epochs: 0,
        }
    }

    /// The learning rate at fractional epoch `t` (cosine, step) or the current one (plateau).
    pub fn lr_at(&self, t: f64) -> f64 {
        match self.kind {
            ScheduleKind::Constant | ScheduleKind::Plateau => self.lr,
            ScheduleKind::Step => self.base_lr * 0.1f64.powi((t / self.step_epochs.max(1) as f64).floor() as i32),
            ScheduleKind::Cosine => {
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * t / self.epochs.max(1) as f64).cos())
            }
        }
    }

    /// End of an epoch with validation error `error` (plateau: maybe divide by 10). Returns
    /// true when the learning rate dropped.
    pub fn end_epoch(&mut self, error: Option<f64>) -> bool {
        if self.kind != ScheduleKind::Plateau {
            return false;
        }
        let Some(e) = error else { return false };
        match self.best_error {
            Some(b) if e >= b - 1e-9 => {
                self.bad_epochs += 1;
                if self.bad_epochs >= self.patience && self.drops < self.max_drops {
                    self.lr /= 10.0;
                    self.drops += 1;
                    self.bad_epochs = 0;
                    return true;
                }
            }
            _ => {
                self.best_error = Some(e);
                self.bad_epochs = 0;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lr after each validation error of `errors`, for a plateau schedule of `patience`.
    fn lrs(kind: ScheduleKind, patience: u64, errors: &[f64]) -> Vec<f64> {
        let mut s = Schedule::new(kind, 1000.0, 90, 30, patience);
        errors
            .iter()
            .map(|&e| {
                s.end_epoch(Some(e));
                s.lr
            })
            .collect()
    }

    #[test]
    fn plateau_divides_by_ten_after_patience_evaluations_without_a_new_best() {
        use ScheduleKind::Plateau;
        // A tie is no new best; a drop starts the count again, the best is kept across it.
        assert_eq!(lrs(Plateau, 1, &[0.5, 0.5, 0.4, 0.45]), [1000.0, 100.0, 100.0, 10.0]);
        // A new best starts the count again.
        let errors = [0.5, 0.6, 0.5, 0.4, 0.6, 0.6, 0.6, 0.45];
        assert_eq!(
            lrs(Plateau, 3, &errors),
            [1000.0, 1000.0, 1000.0, 1000.0, 1000.0, 1000.0, 100.0, 100.0]
        );
        // At most three drops.
        assert_eq!(lrs(Plateau, 1, &[0.5; 6]), [1000.0, 100.0, 10.0, 1.0, 1.0, 1.0]);
        // No evaluation (an epoch of --eval-every not evaluated) counts for nothing.
        let mut s = Schedule::new(Plateau, 1000.0, 90, 30, 1);
        assert!(!s.end_epoch(Some(0.5)) && !s.end_epoch(None) && s.end_epoch(Some(0.5)));
        // The other schedules do not look at the validation error.
        assert_eq!(lrs(ScheduleKind::Step, 1, &[0.5; 3]), [1000.0; 3]);
    }
}
