//! Our LRN op from Rust against a reference built from stock tch ops (the composition
//! F.local_response_norm uses), and against finite differences in float64.
mod common;

use alexnet_rs::error::OpErrorKind;
use alexnet_rs::ops::{lrn, lrn_reference};
use tch::{Kind, Tensor};

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).abs();
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    diff.max().double_value(&[]) / scale
}

/// Values and input gradients of `f` for a fixed upstream gradient `g`.
fn value_and_grad(x: &Tensor, g: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let y = f(&x);
    (&y * g).sum(y.kind()).backward();
    (y.detach(), x.grad())
}

fn check_against_reference(x: &Tensor, size: i64, k: f64, alpha: f64) {
    let g = x.randn_like();
    let (alpha, beta) = (alpha, 0.75);
    let (y, dx) = value_and_grad(x, &g, |x| lrn(x, size, alpha, beta, k).unwrap());
    let (y_ref, dx_ref) = value_and_grad(x, &g, |x| lrn_reference(x, size, alpha, beta, k));
    let (ey, eg) = (max_rel_err(&y, &y_ref), max_rel_err(&dx, &dx_ref));
    assert!(
        ey <= 1e-5,
        "value mismatch {ey:e} (size {size}, k {k}, shape {:?})",
        x.size()
    );
    assert!(
        eg <= 1e-5,
        "gradient mismatch {eg:e} (size {size}, k {k}, shape {:?})",
        x.size()
    );
}

#[test]
fn values_and_gradients_match_the_stock_composition() {
    tch::manual_seed(0);
    // Large activations so that the normalisation term matters (x^2 * alpha/size ~ k).
    for shape in [vec![2i64, 7, 9], vec![2, 11, 5, 6], vec![1, 8, 3, 4, 5]] {
        let x = Tensor::randn(shape.as_slice(), (Kind::Float, tch::Device::Cpu)) * 30.0;
        for size in 1..=7 {
            for k in [1.0, 2.0] {
                check_against_reference(&x, size, k, 1e-2);
            }
        }
    }
}

#[test]
fn alexnet_shapes_and_channels_last() {
    tch::manual_seed(1);
    // conv1's output at batch 2, and a channels_last view of it; the paper's alpha.
    let x = Tensor::randn([2, 96, 55, 55], (Kind::Float, tch::Device::Cpu)).relu() * 50.0;
    check_against_reference(&x, 5, 2.0, 1e-4);
    // channels_last: NHWC storage seen as NCHW (tch has no memory-format API).
    let cl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    assert!(!cl.is_contiguous());
    check_against_reference(&cl, 5, 2.0, 1e-4);
    // beta other than 0.75 takes the general pow path.
    let y = lrn(&x, 3, 1e-3, 0.6, 1.5).unwrap();
    assert!(max_rel_err(&y, &lrn_reference(&x, 3, 1e-3, 0.6, 1.5)) <= 1e-5);
}

#[test]
fn float64_gradient_matches_finite_differences() {
    tch::manual_seed(2);
    let opts = (Kind::Double, tch::Device::Cpu);
    let x = Tensor::randn([2, 6, 3, 3], opts) * 3.0;
    let w = Tensor::randn([2, 6, 3, 3], opts);
    let (size, alpha, beta, k) = (4, 0.5, 0.75, 1.0); // even size: asymmetric window
    let worst = common::worst_finite_difference_error(&x, &w, |x| lrn(x, size, alpha, beta, k).unwrap());
    assert!(worst < 1e-6, "finite-difference mismatch {worst:e}");
}

#[test]
fn bad_input_is_an_error_naming_the_problem() {
    let expect = common::expect_op_error;
    let x1 = Tensor::ones([5], (Kind::Float, tch::Device::Cpu));
    expect(lrn(&x1, 5, 1e-4, 0.75, 2.0), OpErrorKind::Value, "3 or more dimensions");
    let xi = Tensor::ones([1, 4, 2, 2], (Kind::Int64, tch::Device::Cpu));
    expect(
        lrn(&xi, 5, 1e-4, 0.75, 2.0),
        OpErrorKind::Type,
        "float16, bfloat16, float32 or float64",
    );
    let x = Tensor::ones([1, 4, 2, 2], (Kind::Float, tch::Device::Cpu));
    expect(lrn(&x, 0, 1e-4, 0.75, 2.0), OpErrorKind::Value, "size must be >= 1");
    expect(lrn(&x, 5, f64::NAN, 0.75, 2.0), OpErrorKind::Value, "finite");
}

#[test]
fn empty_and_single_channel_inputs() {
    let e = Tensor::zeros([0, 3, 4, 4], (Kind::Float, tch::Device::Cpu));
    assert_eq!(lrn(&e, 5, 1e-4, 0.75, 2.0).unwrap().size(), vec![0, 3, 4, 4]);
    let x = Tensor::randn([2, 1, 4], (Kind::Float, tch::Device::Cpu));
    let y = lrn(&x, 5, 1e-4, 0.75, 2.0).unwrap();
    assert!(max_rel_err(&y, &lrn_reference(&x, 5, 1e-4, 0.75, 2.0)) <= 1e-6);
}
