//! Our grouped-convolution op from Rust against tch's stock conv2d, and the backend setting.
use alexnet_rs::conv::{conv2d, ConvArgs};
use alexnet_rs::ops::grouped_conv2d;
use alexnet_rs::ConvBackend;
use tch::{Device, Kind, Tensor};

#[test]
fn values_and_gradients_equal_stock_conv2d() {
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([2, 8, 11, 11], opts).set_requires_grad(true);
    let w = Tensor::randn([12, 4, 3, 3], opts).set_requires_grad(true);
    let b = Tensor::randn([12], opts).set_requires_grad(true);
    let ours = grouped_conv2d(&x, &w, Some(&b), [2, 2], [1, 1], 2).unwrap();
    let stock = x.conv2d(&w, Some(&b), [2, 2], [1, 1], [1, 1], 2);
    assert!(ours.allclose(&stock, 1e-5, 1e-5, false));
    let g = stock.randn_like();
    let grads = |y: &Tensor| Tensor::run_backward(&[(y * &g).sum(Kind::Float)], &[&x, &w, &b], false, false);
    for (a, r) in grads(&ours).iter().zip(grads(&stock).iter()) {
        assert!(a.allclose(r, 1e-4, 1e-5, false));
    }
}

#[test]
fn every_backend_gives_the_same_result_and_bad_names_are_refused() {
    let opts = (Kind::Float, Device::Cpu);
    let (x, w, b) = (
        Tensor::randn([1, 4, 9, 9], opts),
        Tensor::randn([6, 2, 5, 5], opts),
        Tensor::randn([6], opts),
    );
    let a = ConvArgs {
        stride: 1,
        padding: 2,
        groups: 2,
    };
    let reference = conv2d(ConvBackend::Stock, &x, &w, &b, a).unwrap();
    for backend in ConvBackend::ALL {
        assert!(
            conv2d(backend, &x, &w, &b, a)
                .unwrap()
                .allclose(&reference, 1e-5, 1e-5, false),
            "{backend}"
        );
    }
    assert!("cudnn"
        .parse::<ConvBackend>()
        .unwrap_err()
        .to_string()
        .contains("ours, stock, auto"));
    let err = grouped_conv2d(&x, &w, None, [1, 1], [0, 0], 3).unwrap_err().to_string();
    assert!(err.contains("groups=3"), "{err}");
}

#[test]
fn bf16_autocast_runs_convolutions_in_bf16_for_both_backends() {
    use alexnet_rs::model::{forward_with, init_params, Stage};
    use alexnet_rs::ops::autocast_bf16;
    use alexnet_rs::placement::Placement;
    use alexnet_rs::{Config, Preset};
    tch::manual_seed(0);
    for backend in [ConvBackend::Stock, ConvBackend::Ours] {
        let mut cfg = Config::preset(Preset::Paper, 10).unwrap();
        cfg.conv_backend = backend;
        let params = init_params(&cfg, &Placement::single(Device::Cpu)).unwrap();
        let x = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
        let mut kinds = Vec::new();
        let logits = autocast_bf16(false, || {
            forward_with(&cfg, &params, &x, false, &mut |name, stage, t| {
                if stage == Stage::Conv || stage == Stage::Lrn {
                    kinds.push((name.to_string(), t.kind()));
                }
            })
        })
        .unwrap();
        assert!(kinds.iter().all(|(_, k)| *k == Kind::BFloat16), "{backend}: {kinds:?}");
        // What `auto` keys its timed choices by (a float32 input convolved in bfloat16 is not a
        // float32 convolution): c10's BFloat16 inside, nothing outside, and on the other device.
        assert_eq!(
            autocast_bf16(false, || alexnet_rs::ops::autocast_dtype(false)),
            Some(15)
        );
        assert_eq!(autocast_bf16(false, || alexnet_rs::ops::autocast_dtype(true)), None);
        assert_eq!(alexnet_rs::ops::autocast_dtype(false), None);
        // And whether it times the backward passes too (training) or the forward alone.
        assert!(alexnet_rs::ops::grad_enabled());
        assert!(!tch::no_grad(alexnet_rs::ops::grad_enabled));
        let reference = alexnet_rs::forward(&cfg, &params, &x, false).unwrap();
        let err = (logits.to_kind(Kind::Float) - &reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        assert!(
            err <= 0.05 * scale,
            "{backend}: bf16 logits off by {err} (scale {scale})"
        );
    }
}

#[test]
fn channels_last_inputs_and_weights_give_the_same_logits() {
    use alexnet_rs::model::{init_whole, shard};
    use alexnet_rs::ops::{channels_last, is_channels_last};
    use alexnet_rs::placement::Placement;
    use alexnet_rs::{Config, Preset};
    tch::manual_seed(1);
    let cfg = Config::preset(Preset::Caffe, 10).unwrap();
    let whole = init_whole(&cfg).unwrap();
    let p = Placement::single(Device::Cpu);
    let (plain, cl) = (
        shard(&cfg, &p, &whole, false).unwrap(),
        shard(&cfg, &p, &whole, true).unwrap(),
    );
    assert!(is_channels_last(cl.get("conv1.weight").unwrap()));
    let x = Tensor::randn([2, 3, 227, 227], (Kind::Float, Device::Cpu));
    let a = alexnet_rs::forward(&cfg, &plain, &x, false).unwrap();
    let b = alexnet_rs::forward(&cfg, &cl, &channels_last(&x).unwrap(), false).unwrap();
    assert!(a.allclose(&b, 1e-4, 1e-5, false));
}
