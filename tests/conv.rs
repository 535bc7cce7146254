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
