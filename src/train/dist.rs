//! Data parallelism over processes: the one collective the loop needs (an in-place sum over all
//! ranks), given by the caller. Under torchrun, `python -m alexnet_rs.train` fills it with
//! `torch.distributed.all_reduce` on the process group torchrun set up (gloo on CPU, NCCL on
//! CUDA): PyTorch's own distributed engine, not one of ours.
//!
//! With `world` ranks, rank r trains on its slice of each global batch (batch_size x world, the
//! order one process would use), each rank's loss is summed over its slice and divided by the
//! global batch's images, the gradients are summed (the gradient of the mean loss over the global
//! batch), evaluation counts are summed, and rank 0 alone writes metrics, curves and
//! checkpoints. The ranks check at the start that they begin alike ([`Group::check_same`]).
use crate::error::{Error, Result};
use crate::model::Params;
use tch::{Device, Tensor};

/// Sums a tensor over every rank, in place.
pub type AllReduce<'a> = dyn Fn(&Tensor) -> Result<()> + Sync + 'a;

/// This process's place in a data-parallel run.
pub struct Group<'a> {
    pub rank: usize,
    pub world: usize,
    /// The rank on this node: picks the node's devices (`Placement::for_local_rank`).
    pub local_rank: usize,
    pub all_reduce: &'a AllReduce<'a>,
}

impl Group<'_> {
    /// Sums `tensors` over the ranks in place: one flat buffer per device, one collective each.
    pub fn sum(&self, tensors: &[&Tensor]) -> Result<()> {
        let mut devices: Vec<Device> = Vec::new();
        for t in tensors {
            if !devices.contains(&t.device()) {
                devices.push(t.device());
            }
        }
        for d in devices {
            let mine: Vec<&&Tensor> = tensors.iter().filter(|t| t.device() == d).collect();
            let flat: Vec<Tensor> = mine.iter().map(|t| t.reshape([-1])).collect();
            let buf = Tensor::f_cat(&flat, 0)?;
            (self.all_reduce)(&buf)?;
            let mut offset = 0;
            for t in mine {
                let n = t.numel() as i64;
                t.shallow_clone().f_copy_(&buf.f_narrow(0, offset, n)?.f_view_as(t)?)?;
                offset += n;
            }
        }
        Ok(())
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.sum(&[&Tensor::zeros([1], (tch::Kind::Float, Device::Cpu))])
    }

    /// `values` summed over the ranks, in float64 on `device` (the parameters' first: NCCL
    /// reduces device tensors); exact for integers below 2^53.
    pub fn sum_values<const N: usize>(&self, values: [f64; N], device: Device) -> Result<[f64; N]> {
        let t = Tensor::from_slice(&values).to_device(device);
        self.sum(&[&t])?;
        let v = Vec::<f64>::try_from(t.to_device(Device::Cpu))?;
        Ok(std::array::from_fn(|i| v[i]))
    }

    /// Refuses, on every rank alike, `values` (names and this rank's values, the same names in
    /// the same order on every rank; integers below 2^53 / world) that differ between the ranks:
    /// a rank whose value is not the ranks' mean says so, then every rank learns whether one did.
    pub fn check_same(&self, values: &[(&str, f64)], device: Device, cure: &str) -> Result<()> {
        let mine: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
        let t = Tensor::from_slice(&mine).to_device(device);
        self.sum(&[&t])?;
        let sums = Vec::<f64>::try_from(t.to_device(Device::Cpu))?;
        let differs = mine.iter().zip(&sums).any(|(v, s)| *s != v * self.world as f64);
        let [n] = self.sum_values([f64::from(u8::from(differs))], device)?;
        if n == 0.0 {
            return Ok(());
        }
        let list: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v}")).collect();
        Err(Error::Config(format!(
            "the {} ranks do not start alike: this one (rank {}) has {}; {cure}",
            self.world,
            self.rank,
            list.join(", ")
        )))
    }

    /// Sums the gradients and a step's totals (loss sum, errors) over the ranks, in one
    /// collective per device.
    pub fn sum_step(&self, params: &Params, totals: [f64; 2]) -> Result<[f64; 2]> {
        let grads: Vec<Tensor> = params
            .iter_shards()
            .filter(|(_, _, p)| p.requires_grad())
            .map(|(_, _, p)| p.grad())
            .collect();
        let device = grads.first().map_or(Device::Cpu, Tensor::device);
        // Float32 beside the gradients (NCCL reduces device tensors): exact for the error count;
        // the loss sum is rounded to float32 (a data-parallel run's logged loss, not the
        // gradients, may differ from one process's in the last digits).
        let t = Tensor::from_slice(&totals.map(|v| v as f32)).to_device(device);
        let mut all: Vec<&Tensor> = grads.iter().collect();
        all.push(&t);
        self.sum(&all)?;
        let v = Vec::<f32>::try_from(t.to_device(Device::Cpu))?;
        Ok([v[0], v[1]].map(f64::from))
    }
}
