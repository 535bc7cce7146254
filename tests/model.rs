//! The presets: parameter counts and MACs against ALEXNET.md's published numbers, the analytic
//! layer table against a real forward pass, names, initialisation and input checks.
use alexnet_rs::info::layer_table;
use alexnet_rs::model::{activations, forward, forward_with, init_params};
use alexnet_rs::placement::Placement;
use alexnet_rs::{Config, Error, Preset};
use tch::{Device, Kind, Tensor};

fn build(preset: Preset, classes: i64) -> (Config, (), alexnet_rs::Params) {
    let cfg = Config::preset(preset, classes).unwrap();
    let params = init_params(&cfg, &Placement::single(Device::Cpu)).unwrap();
    (cfg, (), params)
}

#[test]
fn parameter_counts_match_the_published_ones() {
    // ALEXNET.md: paper 60,965,224; torchvision 61,100,840 (torchvision's own count); caffe = paper.
    for (preset, expected) in [
        (Preset::Paper, 60_965_224),
        (Preset::Torchvision, 61_100_840),
        (Preset::Caffe, 60_965_224),
    ] {
        let (cfg, _, params) = build(preset, 1000);
        assert_eq!(cfg.num_params(), expected, "{preset}");
        let real: i64 = params.iter_shards().map(|(_, _, t)| t.numel() as i64).sum();
        assert_eq!(real, expected, "{preset}: variables created");
        let table: i64 = layer_table(&cfg, cfg.input_size)
            .unwrap()
            .iter()
            .map(|r| r.params)
            .sum();
        assert_eq!(table, expected, "{preset}: info table");
    }
}

#[test]
fn macs_match_the_published_ones() {
    // ALEXNET.md: 724 M per image for paper (conv 666 M), 714 M for torchvision.
    for (preset, mmacs) in [(Preset::Paper, 724), (Preset::Torchvision, 714), (Preset::Caffe, 724)] {
        let cfg = Config::preset(preset, 1000).unwrap();
        let macs: i64 = layer_table(&cfg, cfg.input_size).unwrap().iter().map(|r| r.macs).sum();
        assert_eq!((macs as f64 / 1e6).round() as i64, mmacs, "{preset}");
    }
}

#[test]
fn paper_spatial_sizes_are_55_27_13_6() {
    let cfg = Config::preset(Preset::Paper, 1000).unwrap();
    let rows = layer_table(&cfg, 224).unwrap();
    let side = |name: &str| rows.iter().find(|r| r.name == name).unwrap().out_shape[1];
    assert_eq!(
        [
            side("conv1"),
            side("conv1.pool"),
            side("conv2.pool"),
            side("conv5.pool")
        ],
        [55, 27, 13, 6]
    );
}

#[test]
fn forward_shapes_equal_the_layer_table_for_every_preset() {
    tch::manual_seed(0);
    for preset in Preset::ALL {
        let (cfg, _vs, params) = build(preset, 10);
        let size = cfg.input_size;
        let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
        let mut seen: Vec<(String, Vec<i64>)> = Vec::new();
        let logits = forward_with(&cfg, &params, &x, false, &mut |name, stage, t| {
            seen.push((stage.label(name), t.size()[1..].to_vec()));
        })
        .unwrap();
        assert_eq!(logits.size(), vec![2, 10], "{preset}");
        let table: Vec<(String, Vec<i64>)> = layer_table(&cfg, size)
            .unwrap()
            .into_iter()
            .skip(1)
            .map(|r| (r.name, r.out_shape))
            .collect();
        assert_eq!(seen, table, "{preset}");
    }
}

#[test]
fn torchvision_preset_uses_torchvision_keys() {
    let (_, _, params) = build(Preset::Torchvision, 1000);
    let mut names: Vec<String> = params.names().cloned().collect();
    names.sort();
    let mut expected: Vec<String> = [
        "features.0",
        "features.3",
        "features.6",
        "features.8",
        "features.10",
        "classifier.1",
        "classifier.4",
        "classifier.6",
    ]
    .iter()
    .flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")])
    .collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn paper_initialisation() {
    tch::manual_seed(0);
    let (_, _vs, params) = build(Preset::Paper, 1000);
    let bias = |n: &str| params.get(&format!("{n}.bias")).unwrap().shallow_clone();
    for (layer, value) in [
        ("conv1", 0.0),
        ("conv2", 1.0),
        ("conv3", 0.0),
        ("conv4", 1.0),
        ("conv5", 1.0),
        ("fc6", 1.0),
        ("fc7", 1.0),
        ("fc8", 0.0),
    ] {
        let b = bias(layer);
        assert_eq!(b.min().double_value(&[]), value, "{layer}");
        assert_eq!(b.max().double_value(&[]), value, "{layer}");
    }
    let w = params.get("fc6.weight").unwrap();
    let std = w.std(true).double_value(&[]);
    let mean = w.mean(Kind::Float).double_value(&[]);
    assert!(
        (std - 0.01).abs() < 1e-4 && mean.abs() < 1e-4,
        "fc6 weight std {std}, mean {mean}"
    );
}

#[test]
fn torchvision_initialisation_is_pytorchs_default() {
    tch::manual_seed(0);
    let (_, _vs, params) = build(Preset::Torchvision, 1000);
    // nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); conv1 fan_in = 3 * 11 * 11.
    let bound = 1.0 / (363f64).sqrt();
    let w = params.get("features.0.weight").unwrap();
    assert!(w.abs().max().double_value(&[]) <= bound);
    assert!(w.abs().max().double_value(&[]) > 0.95 * bound);
}

#[test]
fn backward_reaches_every_parameter() {
    tch::manual_seed(0);
    for preset in Preset::ALL {
        let (cfg, _vs, params) = build(preset, 10);
        let x = Tensor::randn([2, 3, cfg.input_size, cfg.input_size], (Kind::Float, Device::Cpu));
        forward(&cfg, &params, &x, true)
            .unwrap()
            .square()
            .sum(Kind::Float)
            .backward();
        for (name, _, p) in params.iter_shards() {
            let g = p.grad();
            assert!(g.defined(), "{preset}: no gradient for {name}");
            assert!(g.isfinite().all().int64_value(&[]) == 1, "{preset}: {name}");
        }
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (cfg, _vs, params) = build(Preset::Paper, 10);
    let err = |x: Tensor| forward(&cfg, &params, &x, false).unwrap_err().to_string();
    let e = err(Tensor::zeros([2, 1, 224, 224], (Kind::Float, Device::Cpu)));
    assert!(e.contains("(N, 3, H, W)"), "{e}");
    let e = err(Tensor::zeros([1, 3, 224, 224], (Kind::Int64, Device::Cpu)));
    assert!(e.contains("floating point"), "{e}");
    let e = err(Tensor::zeros([1, 3, 256, 256], (Kind::Float, Device::Cpu)));
    assert!(e.contains("224x224"), "{e}");
    let e = err(Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)));
    assert!(e.contains("too small") || e.contains("features"), "{e}");
    // A 160x320 input ends in 4x9 maps: the 9216 features of 6x6 ones, laid out otherwise
    // (garbage logits in silence); Caffe's ceil-mode pools likewise.
    for preset in [Preset::Paper, Preset::Caffe] {
        let (cfg, _vs, params) = build(preset, 10);
        let e = forward(
            &cfg,
            &params,
            &Tensor::zeros([1, 3, 160, 320], (Kind::Float, Device::Cpu)),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("(4x9 maps)") && e.contains("needs 2"), "{preset}: {e}");
    }
    assert!(matches!(Config::preset(Preset::Paper, 0), Err(Error::Config(_))));
    assert!(matches!("vgg".parse::<Preset>(), Err(Error::Config(_))));
    assert!(layer_table(&cfg, 8).is_err());
}

#[test]
fn activations_by_name_equal_the_observed_stages_and_stop_at_the_deepest() {
    tch::manual_seed(0);
    let (cfg, _vs, params) = build(Preset::Paper, 10);
    let x = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
    let mut seen = std::collections::BTreeMap::new();
    let _logits = forward_with(&cfg, &params, &x, false, &mut |name, stage, t| {
        seen.insert(stage.label(name), t.copy());
    })
    .unwrap();
    let ask: Vec<String> = ["conv2.pool", "conv1", "conv1.lrn"].map(String::from).to_vec();
    let got = activations(&cfg, &params, &x, &ask, None).unwrap();
    for (name, t) in ask.iter().zip(&got) {
        assert!(t.allclose(&seen[name], 1e-6, 1e-6, false), "{name}");
    }
    // Stopping after conv2.pool: the class layer's weights get no gradient from it.
    got[0].sum(Kind::Float).backward();
    assert!(!params.get("fc8.weight").unwrap().grad().defined());
    assert!(params.get("conv1.weight").unwrap().grad().defined());
    let err = activations(&cfg, &params, &x, &["conv9".to_string()], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no layer `conv9`") && err.contains("conv1.lrn"), "{err}");
}

#[test]
fn an_input_past_the_limit_is_a_config_error() {
    // AlexNet(input_size=2**40) gave "negative dimension" from libtorch (fc6's size overflowed).
    let cfg = alexnet_rs::Config::preset(alexnet_rs::Preset::Paper, 10).unwrap();
    let msg = cfg.spatial_sizes(1 << 40).unwrap_err().to_string();
    assert!(msg.contains("1099511627776") && msg.contains("limit"), "{msg}");
    assert!(cfg.spatial_sizes(alexnet_rs::config::MAX_INPUT).is_ok());
}

#[test]
fn any_accepted_shard_layout_computes_the_whole_network() {
    // Shards that the check accepted but the forward misread: conv1 whole and conv2 in two
    // halves ran groups=2 over the whole input with half the rows (wrong input groups), and
    // uneven halves read the other device's slice. Wrong logits, no error.
    let mut cfg = Config::preset(Preset::Paper, 10).unwrap();
    cfg.input_size = 67;
    let whole = alexnet_rs::model::init_seeded(&cfg, 5).unwrap();
    let x = Tensor::rand([2, 3, 67, 67], (Kind::Float, Device::Cpu));
    let logits = |split: &dyn Fn(&str) -> Vec<i64>| {
        let map = whole
            .iter()
            .map(|(k, t)| {
                let sizes = split(k);
                (k.clone(), t.split_with_sizes(&sizes, 0))
            })
            .collect();
        let params = alexnet_rs::Params::from_shards(map);
        forward(&cfg, &params, &x, false)
    };
    let rows = |k: &str| whole[k].size()[0];
    let reference = logits(&|k| vec![rows(k)]).unwrap();
    let halves = |k: &str| vec![rows(k) / 2, rows(k) / 2];
    let conv1_whole = logits(&|k| {
        if k.starts_with("conv1.") {
            vec![rows(k)]
        } else {
            halves(k)
        }
    })
    .unwrap();
    assert!(
        conv1_whole.allclose(&reference, 1e-5, 1e-5, false),
        "conv1 whole, the rest in halves"
    );
    let uneven = logits(&|k| {
        if k.starts_with("conv2.") {
            vec![64, 192]
        } else {
            halves(k)
        }
    });
    let e = uneven.unwrap_err().to_string();
    assert!(e.contains("conv2.weight") && e.contains("equal"), "{e}");
    // conv1 in 4 shards: its LRN's 2 towers do not divide over them (an internal error).
    let quarters = logits(&|k| {
        if k.starts_with("conv1.") {
            vec![rows(k) / 4; 4]
        } else {
            vec![rows(k)]
        }
    });
    let e = quarters.unwrap_err().to_string();
    assert!(e.contains("conv1.weight") && e.contains("LRN towers"), "{e}");
}

#[test]
fn an_lrn_over_slices_narrower_than_its_window_is_the_whole_lrn() {
    // Caffe's conv1 (one LRN tower over 96 channels) in 96 one-channel shards, a layout the check
    // accepts: each slice borrowed from its next neighbours alone, 1 channel where the window of
    // 5 needs 2 (conv1's LRN off by ~9% of its largest output, no error).
    let mut cfg = Config::preset(Preset::Caffe, 10).unwrap();
    cfg.input_size = 67;
    let mut whole = alexnet_rs::model::init_seeded(&cfg, 5).unwrap();
    // Large enough pre-activations that the LRN's denominator is far from k (its effect shows).
    let w1 = whole["conv1.weight"].shallow_clone() * 300.0;
    whole.insert("conv1.weight".into(), w1);
    let x = Tensor::rand([2, 3, 67, 67], (Kind::Float, Device::Cpu));
    let sharded = |n: i64| {
        let map = whole
            .iter()
            .map(|(k, t)| {
                let shards = if k.starts_with("conv1.") { n } else { 1 };
                (k.clone(), t.split(t.size()[0] / shards, 0))
            })
            .collect();
        forward(&cfg, &alexnet_rs::Params::from_shards(map), &x, false).unwrap()
    };
    let reference = sharded(1);
    for n in [2, 48, 96] {
        let d = (sharded(n) - &reference).abs().max().double_value(&[]);
        assert!(d <= 1e-5 * reference.abs().max().double_value(&[]), "{n} shards: {d}");
    }
}

#[test]
fn each_local_rank_takes_its_own_cuda_devices() {
    let on = |spec: &str, r| Placement::for_local_rank(spec, r);
    assert_eq!(on("cuda:0,cuda:1", 1).unwrap(), "cuda:2,cuda:3");
    assert_eq!(on("cuda:0", 3).unwrap(), "cuda:3");
    assert_eq!(on("cuda:0,cpu", 1).unwrap(), "cuda:1,cpu");
    assert_eq!(on("cpu,cpu", 1).unwrap(), "cpu,cpu");
    assert_eq!(on("cuda:1,cuda:0", 1).unwrap(), "cuda:3,cuda:2");
    // cuda:0,cuda:2 gave rank 1 cuda:2,cuda:4: cuda:2 trained for two ranks at once.
    let e = on("cuda:0,cuda:2", 1).unwrap_err().to_string();
    assert!(e.contains("cuda:0,cuda:2") && e.contains("consecutive"), "{e}");
    // One rank per node: the devices named, consecutive or not.
    assert_eq!(on("cuda:0,cuda:2", 0).unwrap(), "cuda:0,cuda:2");
}

#[test]
fn pool_output_sizes_are_pytorchs() {
    // The reference: ATen's max_pool2d itself (an error where it has no output). Ceil mode gave 0
    // for a map one smaller than the window (Caffe at 39-54 pixels refused), where PyTorch and
    // Caffe pool a 2x2 map to 1x1.
    use alexnet_rs::config::{pool_out, Pool};
    for (kernel, stride) in [(3, 2), (2, 2), (3, 1), (5, 3)] {
        for ceil_mode in [false, true] {
            for input in 1..=20 {
                let x = Tensor::zeros([1, 1, input, input], (Kind::Float, Device::Cpu));
                let want = x
                    .f_max_pool2d([kernel, kernel], [stride, stride], [0, 0], [1, 1], ceil_mode)
                    .map_or(0, |y| y.size()[3]);
                let got = pool_out(
                    input,
                    Pool {
                        kernel,
                        stride,
                        ceil_mode,
                    },
                );
                assert_eq!(
                    got, want,
                    "input {input}, kernel {kernel}, stride {stride}, ceil {ceil_mode}"
                );
            }
        }
    }
    // The caffe preset at 48 pixels: pool5 sees 2x2 maps.
    let cfg = Config::preset(Preset::Caffe, 10).unwrap();
    assert_eq!(cfg.spatial_sizes(48).unwrap(), [5, 2, 2, 2, 1]);
}
