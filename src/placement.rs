//! Model-parallel placement: the paper's two-GPU layout (section 3.2; CHM `layers-145.cfg`) on
//! any one or two devices (`cpu`, `cuda:0`, `cuda:0,cuda:1`, `cuda:0,cpu`, `cpu,cpu`).
//!
//! With two devices every conv and FC layer's output channels are split in half, one half per
//! device. Grouped layers (conv2/4/5 of `paper`) keep their groups local; layers that read every
//! input channel (conv3, the FC layers) gather the activations first; LRN normalises each
//! device's tower alone in `paper` (as the two GPUs did) and exchanges the few channels its window
//! reaches across the split in `caffe` (one GPU's LRN over all channels); the last (class) layer
//! sits whole on the first device, as in the original code. The forward pass in `model` computes the same function
//! whatever the placement. The Python side calls this code for its table.
use crate::config::Config;
use crate::error::{Error, Result};
use std::fmt::Write;
use tch::Device;

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub devices: Vec<Device>,
}

/// Where one parameter shard lives: rows `rows` (dim 0) of parameter `name` on `device`.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub name: String,
    pub rows: std::ops::Range<i64>,
    pub device: Device,
    /// Index of the device in the placement (two shards may share a device: `cpu,cpu`).
    pub slot: usize,
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s.trim() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        d => d
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| Error::Config(format!("unknown device `{d}` (expected cpu, cuda or cuda:N)"))),
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Placement {
    pub fn single(device: Device) -> Placement {
        Placement { devices: vec![device] }
    }

    /// `cpu`, `cuda:0`, `cuda:0,cuda:1`, `cuda:0,cpu`, `cpu,cpu`: one or two devices.
    /// The devices of a spec as local rank `local_rank` of a node uses them: each rank takes its
    /// own block of CUDA devices (`cuda:0,cuda:1` is cuda:2r,cuda:2r+1 for local rank r; `cuda:0`
    /// is cuda:r); CPU entries stay. Returns the spec string.
    pub fn for_local_rank(spec: &str, local_rank: usize) -> Result<String> {
        let p = Placement::parse(spec)?;
        let mut cuda: Vec<usize> = p
            .devices
            .iter()
            .filter_map(|d| if let Device::Cuda(i) = d { Some(*i) } else { None })
            .collect();
        cuda.sort_unstable();
        cuda.dedup();
        let block = cuda.len();
        // cuda:0,cuda:2 would give local rank 1 cuda:2,cuda:4: one device for two ranks (local
        // rank 0 keeps the devices named: alone on its node, any of them).
        if local_rank > 0 && cuda.last().is_some_and(|last| last - cuda[0] + 1 != block) {
            return Err(Error::Config(format!(
                "--devices {spec}: with several ranks on a node, each takes its own block of consecutive \
                 CUDA devices (cuda:0,cuda:1 for local rank 0, cuda:2,cuda:3 for rank 1): name consecutive ones"
            )));
        }
        let names: Vec<String> = p
            .devices
            .iter()
            .map(|d| match d {
                Device::Cuda(i) => device_name(Device::Cuda(i + local_rank * block)),
                other => device_name(*other),
            })
            .collect();
        Ok(names.join(","))
    }

    pub fn parse(spec: &str) -> Result<Placement> {
        let devices = spec.split(',').map(parse_device).collect::<Result<Vec<_>>>()?;
        if devices.is_empty() || devices.len() > 2 {
            return Err(Error::Config(format!(
                "--devices takes one or two devices, got `{spec}`"
            )));
        }
        Ok(Placement { devices })
    }

    /// Errors unless every CUDA device named exists here.
    pub fn check_available(&self) -> Result<()> {
        let n = tch::Cuda::device_count() as usize;
        for d in &self.devices {
            if let Device::Cuda(i) = d {
                if *i >= n {
                    return Err(Error::Config(format!(
                        "cuda:{i} does not exist here ({n} CUDA devices)"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn first(&self) -> Device {
        self.devices[0]
    }

    pub fn is_split(&self) -> bool {
        self.devices.len() > 1
    }

    /// Waits for the work queued on every CUDA device of the placement (for a timer: CUDA runs
    /// asynchronously, so a clock read without it times the launches).
    pub fn synchronize(&self) {
        for &d in &self.devices {
            if let Device::Cuda(i) = d {
                tch::Cuda::synchronize(i as i64);
            }
        }
    }

    /// Every parameter's shards, in network order.
    pub fn shards(&self, cfg: &Config) -> Result<Vec<Shard>> {
        let n = self.devices.len() as i64;
        let last = cfg.fcs.last().map(|f| f.name.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for (name, shape) in cfg.param_shapes() {
            let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
            let rows = shape[0];
            if n == 1 || layer == last {
                out.push(Shard {
                    name,
                    rows: 0..rows,
                    device: self.first(),
                    slot: 0,
                });
                continue;
            }
            if rows % n != 0 {
                return Err(Error::Config(format!(
                    "{name}: {rows} output channels do not split over {n} devices"
                )));
            }
            for (slot, &device) in self.devices.iter().enumerate() {
                let k = slot as i64;
                out.push(Shard {
                    name: name.clone(),
                    rows: k * rows / n..(k + 1) * rows / n,
                    device,
                    slot,
                });
            }
        }
        // Grouped layers stay local only if each device holds whole groups.
        for c in &cfg.convs {
            if n > 1 && c.groups > 1 && c.groups % n != 0 {
                return Err(Error::Config(format!(
                    "{}: {} groups do not split over {n} devices",
                    c.name, c.groups
                )));
            }
        }
        Ok(out)
    }

    /// The table `alexnet placement` prints.
    pub fn table(&self, cfg: &Config) -> Result<String> {
        let mut s = String::new();
        let mut names: Vec<String> = self.devices.iter().map(|&d| device_name(d)).collect();
        let _ = writeln!(s, "placement of preset `{}` on {}", cfg.preset, names.join(", "));
        if names.len() == 2 && names[0] == names[1] {
            // The same device twice (`cpu,cpu`): its two places are told apart by their slot.
            names = names.iter().enumerate().map(|(i, n)| format!("{n} #{i}")).collect();
        }
        let _ = writeln!(
            s,
            "{:<22} {:<14} {:<10} {:>12}",
            "parameter", "shard (dim 0)", "device", "elements"
        );
        let shapes: std::collections::HashMap<String, Vec<i64>> = cfg.param_shapes().into_iter().collect();
        let mut per_device = vec![0i64; self.devices.len()];
        for sh in self.shards(cfg)? {
            let rest: i64 = shapes[&sh.name][1..].iter().product();
            let n = (sh.rows.end - sh.rows.start) * rest;
            per_device[sh.slot] += n;
            let rows = format!("{}..{}", sh.rows.start, sh.rows.end);
            let _ = writeln!(s, "{:<22} {:<14} {:<10} {:>12}", sh.name, rows, names[sh.slot], n);
        }
        for (d, n) in names.iter().zip(per_device) {
            let _ = writeln!(s, "total on {d}: {} parameters", crate::info::group_digits(n));
        }
        Ok(s)
    }
}
