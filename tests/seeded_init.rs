//! The training run's initialisation from a generator of its own (`model::init_seeded`) against
//! torch's global one. Alone in its test binary: the reference draws from torch's global
//! generator, which the other tests (threads of one binary) would draw from at the same time.
use alexnet_rs::{Config, Preset};
use tch::{Device, Kind, Tensor};

#[test]
fn a_seeded_initialisation_draws_what_manual_seed_then_randn_and_rand_give() {
    // The run's private generator against torch's own: manual_seed, then randn (the paper's
    // N(0, std) weights) or rand (torchvision's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and
    // biases), layer by layer in network order.
    for (preset, normal) in [(Preset::Paper, true), (Preset::Torchvision, false)] {
        let cfg = Config::preset(preset, 10).unwrap();
        let seeded = alexnet_rs::model::init_seeded(&cfg, 7).unwrap();
        tch::manual_seed(7);
        let opts = (Kind::Float, Device::Cpu);
        for pair in cfg.param_shapes().chunks(2) {
            let ((w, ws), (b, bs)) = (&pair[0], &pair[1]);
            if normal {
                let std = 0.01; // every layer of the paper's recipe
                let want = Tensor::randn(ws.as_slice(), opts) * std;
                assert!(seeded[w].equal(&want), "{preset} {w}");
                assert!(seeded[w].std(true).double_value(&[]) > std * 0.9, "{preset} {w}: drawn");
            } else {
                let bound = 1.0 / (ws[1..].iter().product::<i64>() as f64).sqrt();
                for (name, shape) in [(w, ws), (b, bs)] {
                    let want = Tensor::rand(shape.as_slice(), opts) * (2.0 * bound) - bound;
                    assert!(seeded[name].equal(&want), "{preset} {name}");
                }
            }
        }
    }
}
