//! The fused ops and the allocation changes of the CPU training step, each against the unfused
//! composition: relu -> LRN -> max-pool (`ops::relu_lrn_max_pool2d`) against ATen's relu, our
//! LRN op (itself tested against the stock-op reference in tests/lrn.rs and tests/python) and
//! ATen's max_pool2d; the one-pass SGD against the in-place ATen
//! ops it replaces; the FC layer whose backward applies that update (`ops::linear_sgd`) against
//! F.linear, ATen's GEMMs for its gradients and the same reference update; the caching CPU allocator's scope (values unchanged, blocks reused, nothing
//! held after the scope).
mod common;

use alexnet_rs::config::{Config, Preset};
use alexnet_rs::error::OpErrorKind;
use alexnet_rs::model;
use alexnet_rs::ops::{self, relu_lrn_max_pool2d, LrnArgs};
use alexnet_rs::optim::{Sgd, UpdateRule};
use alexnet_rs::placement::Placement;
use tch::{Device, Kind, Tensor};

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(1e-30)
}

/// The composition. Its LRN is our op, which does the fused kernel's arithmetic: with the stock
/// LRN, which rounds differently, a window whose two largest values are within rounding may send
/// the gradient elsewhere (a legitimate near-tie; it made this test flaky). The Python test
/// compares against the stock LRN with that case handled (tests/python/test_lrn_pool.py).
fn unfused(x: &Tensor, lrn: Option<LrnArgs>, kernel: i64, stride: i64, ceil: bool) -> Tensor {
    let r = x.relu();
    let l = match lrn {
        Some(a) => ops::lrn(&r, a.size, a.alpha, a.beta, a.k).unwrap(),
        None => r,
    };
    l.max_pool2d([kernel, kernel], [stride, stride], [0, 0], [1, 1], ceil)
}

/// Values and input gradients of `f` for the upstream gradient `g(y)`.
fn value_and_grad(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let y = f(&x);
    tch::manual_seed(7);
    let g = y.randn_like();
    (&y * &g).sum(y.kind()).backward();
    (y.detach(), x.grad())
}

fn check(x: &Tensor, lrn: Option<LrnArgs>, kernel: i64, stride: i64, ceil: bool, tol: f64) {
    let (y, dx) = value_and_grad(x, |x| relu_lrn_max_pool2d(x, lrn, kernel, stride, ceil).unwrap());
    let (yr, dxr) = value_and_grad(x, |x| unfused(x, lrn, kernel, stride, ceil));
    let what = format!(
        "shape {:?} {:?} lrn {lrn:?} k{kernel} s{stride} ceil {ceil}",
        x.size(),
        x.kind()
    );
    assert_eq!(y.size(), yr.size(), "{what}");
    let (ey, eg) = (max_rel_err(&y, &yr), max_rel_err(&dx, &dxr));
    assert!(ey <= tol, "value mismatch {ey:e}: {what}");
    assert!(eg <= tol, "gradient mismatch {eg:e}: {what}");
}

const PAPER: LrnArgs = LrnArgs {
    size: 5,
    alpha: 1e-4,
    beta: 0.75,
    k: 2.0,
};

#[test]
fn relu_lrn_pool_matches_the_composition() {
    let _s = common::serial(); // seeded inputs: no other test draws from the generator meanwhile
    tch::manual_seed(0);
    for kind in [Kind::Float, Kind::Double] {
        // AlexNet's conv1 and conv2 outputs (batch 2), odd shapes, partial LRN tiles (S > 64).
        for shape in [
            [2i64, 96, 55, 55],
            [2, 256, 27, 27],
            [3, 7, 9, 11],
            [1, 3, 3, 3],
            [2, 5, 13, 8],
        ] {
            let x = Tensor::randn(shape, (kind, Device::Cpu)) * 40.0;
            for lrn in [Some(PAPER), None] {
                for (kernel, stride, ceil) in [(3, 2, false), (3, 2, true), (2, 2, false), (3, 1, false)] {
                    check(&x, lrn, kernel, stride, ceil, 1e-5);
                }
            }
        }
        // Ceil mode on a map one smaller than the window (Caffe's pool5 at 39-54 pixels): the
        // window hangs over the end.
        let x = Tensor::randn([2, 4, 2, 2], (kind, Device::Cpu)) * 40.0;
        check(&x, Some(PAPER), 3, 2, true, 1e-5);
        check(&x, None, 3, 2, true, 1e-5);
        // Other LRN sizes and beta (general pow path, even asymmetric windows).
        let x = Tensor::randn([2, 9, 7, 7], (kind, Device::Cpu)) * 10.0;
        for size in [1, 2, 4, 7] {
            let a = LrnArgs {
                size,
                alpha: 1e-2,
                beta: 0.6,
                k: 1.0,
            };
            check(&x, Some(a), 3, 2, false, 1e-5);
        }
    }
}

#[test]
fn relu_lrn_pool_other_layouts_and_dtypes() {
    let _s = common::serial(); // seeded inputs: no other test draws from the generator meanwhile
    tch::manual_seed(1);
    let x = Tensor::randn([2, 16, 13, 13], (Kind::Float, Device::Cpu)) * 40.0;
    // channels_last (NHWC storage seen as NCHW; the fused kernel's second layout): same values,
    // output in x's layout.
    let cl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    check(&cl, Some(PAPER), 3, 2, true, 1e-5);
    let y = relu_lrn_max_pool2d(&cl, Some(PAPER), 3, 2, false).unwrap();
    assert!(ops::is_channels_last(&y));
    // A strided view, and bfloat16.
    let strided = Tensor::randn([2, 16, 13, 26], (Kind::Float, Device::Cpu)).slice(3, 0, 26, 2) * 40.0;
    check(&strided, Some(PAPER), 3, 2, false, 1e-5);
    check(&x.to_kind(Kind::BFloat16), Some(PAPER), 3, 2, false, 1e-2);
}

#[test]
fn relu_lrn_pool_ties_nan_and_all_negative_windows() {
    // Draws from torch's generator.
    let _s = common::serial();
    // Ties after the ReLU (all-zero windows) and exact ties among positives: the gradient goes
    // where max_pool2d sends it (the first maximum in row-major order).
    let x = Tensor::from_slice(&[
        -1.0f64,
        -2.0,
        3.0,
        3.0,
        0.0, //
        3.0,
        -1.0,
        3.0,
        -5.0,
        -1.0, //
        -1.0,
        -1.0,
        -1.0,
        2.0,
        2.0, //
        f64::NAN,
        -1.0,
        1.0,
        1.0,
        -4.0, //
        0.0,
        0.0,
        0.5,
        0.5,
        0.5,
    ])
    .view([1, 1, 5, 5]);
    for lrn in [None, Some(PAPER)] {
        let (y, dx) = value_and_grad(&x, |x| relu_lrn_max_pool2d(x, lrn, 3, 2, false).unwrap());
        let (yr, dxr) = value_and_grad(&x, |x| unfused(x, lrn, 3, 2, false));
        // NaN where the reference has NaN, equal elsewhere.
        let same = |a: &Tensor, b: &Tensor| {
            let both_nan = a.isnan().logical_and(&b.isnan());
            let close = (a - b).abs().le(1e-12);
            close.logical_or(&both_nan).all().int64_value(&[]) == 1
        };
        assert!(same(&y, &yr), "values {y} vs {yr}");
        assert!(same(&dx, &dxr), "gradients {dx} vs {dxr}");
    }
}

#[test]
fn relu_lrn_pool_float64_gradient_matches_finite_differences() {
    let _s = common::serial(); // seeded inputs: no other test draws from the generator meanwhile
    tch::manual_seed(2);
    let opts = (Kind::Double, Device::Cpu);
    // Distinct values, away from 0 and from ties, so the function is smooth around x.
    let x = (Tensor::randperm(2 * 6 * 7 * 7, (Kind::Int64, Device::Cpu)).to_kind(Kind::Double) / 3.0 - 40.0)
        .view([2, 6, 7, 7]);
    let w = Tensor::randn([2, 6, 3, 3], opts);
    let a = LrnArgs {
        size: 4,
        alpha: 0.05,
        beta: 0.75,
        k: 1.0,
    };
    let worst =
        common::worst_finite_difference_error(&x, &w, |x| relu_lrn_max_pool2d(x, Some(a), 3, 2, false).unwrap());
    assert!(worst < 1e-6, "finite-difference mismatch {worst:e}");
}

#[test]
fn relu_lrn_pool_bad_input_is_an_error() {
    let expect = common::expect_op_error;
    let x3 = Tensor::ones([2, 4, 5], (Kind::Float, Device::Cpu));
    expect(relu_lrn_max_pool2d(&x3, None, 3, 2, false), OpErrorKind::Value, "4-D");
    let xi = Tensor::ones([1, 4, 5, 5], (Kind::Int64, Device::Cpu));
    expect(
        relu_lrn_max_pool2d(&xi, None, 3, 2, false),
        OpErrorKind::Type,
        "float16, bfloat16, float32 or float64",
    );
    let x = Tensor::ones([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    expect(
        relu_lrn_max_pool2d(&x, None, 3, 2, false),
        OpErrorKind::Value,
        "pooling window",
    );
    expect(
        relu_lrn_max_pool2d(&x, None, 0, 2, false),
        OpErrorKind::Value,
        "kernel and stride",
    );
    let bad = LrnArgs { size: -1, ..PAPER };
    expect(
        relu_lrn_max_pool2d(&x, Some(bad), 1, 1, false),
        OpErrorKind::Value,
        "size must be >= 0",
    );
}

/// The unfused update (the in-place ops `Sgd::step` runs off the CPU/float32 path).
fn sgd_reference(p: &Tensor, g: &Tensor, v: &Tensor, lr: f64, m: f64, wd: f64, paper: bool) -> (Tensor, Tensor) {
    let scalar = |x: f64| Tensor::from(x as f32);
    let (mut p, mut v) = (p.copy(), v.copy());
    let _ = v.f_mul_scalar_(m).unwrap();
    if paper {
        if wd > 0.0 {
            let _ = v.addcmul_(&p, &scalar(-wd * lr));
        }
        let _ = v.addcmul_(g, &scalar(-lr));
        let _ = p.f_add_(&v).unwrap();
    } else {
        let _ = v.f_add_(g).unwrap();
        if wd > 0.0 {
            let _ = v.addcmul_(&p, &scalar(wd));
        }
        let _ = p.addcmul_(&v, &scalar(-lr));
    }
    (p, v)
}

#[test]
fn fused_sgd_matches_the_unfused_update_and_drops_the_gradient() {
    let _s = common::serial(); // seeded inputs: no other test draws from the generator meanwhile
    tch::manual_seed(3);
    let opts = (Kind::Float, Device::Cpu);
    for paper in [false, true] {
        for wd in [0.0, 5e-4] {
            // 300k elements: several parallel chunks; a channels_last 4-D parameter as well.
            for shape in [vec![300_001i64], vec![8, 3, 11, 11]] {
                let p0 = Tensor::randn(shape.as_slice(), opts);
                let g = Tensor::randn(shape.as_slice(), opts);
                let v0 = Tensor::randn(shape.as_slice(), opts);
                let (pr, vr) = sgd_reference(&p0, &g, &v0, 0.01, 0.9, wd, paper);
                let p = p0.copy().set_requires_grad(true);
                (&p * &g).sum(Kind::Float).backward(); // p.grad = g
                let v = v0.copy();
                assert!(ops::sgd_fused(&p, &v, 0.01, 0.9, wd, paper));
                assert!(max_rel_err(&p.detach(), &pr) <= 1e-6, "p (paper {paper}, wd {wd})");
                assert!(max_rel_err(&v, &vr) <= 1e-6, "v (paper {paper}, wd {wd})");
                assert!(!p.grad().defined(), "the gradient is dropped after the update");
            }
        }
    }
    // Tensors the fused pass does not take: left alone, false returned.
    let p = Tensor::randn([10], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    p.sum(Kind::Double).backward();
    let v = p.detach().zeros_like();
    assert!(!ops::sgd_fused(&p, &v, 0.01, 0.9, 0.0, false));
    assert!(p.grad().defined());
    let p = Tensor::randn([10], opts).set_requires_grad(true); // no gradient
    assert!(!ops::sgd_fused(&p, &p.detach().zeros_like(), 0.01, 0.9, 0.0, false));
    // A velocity sharing memory with the weight or its gradient: the pass wrote v through w's
    // memory before reading w (1.71 where 0.81 is right). Refused: the unfused ops then run.
    for v_is_grad in [false, true] {
        let p = Tensor::ones([4], opts).set_requires_grad(true);
        p.sum(Kind::Float).backward();
        let v = if v_is_grad { p.grad() } else { p.detach() };
        assert!(
            !ops::sgd_fused(&p, &v, 0.1, 0.9, 0.0, false),
            "v aliases {}",
            if v_is_grad { "g" } else { "p" }
        );
        assert!(
            p.grad().defined() && p.detach().equal(&Tensor::ones([4], opts)),
            "left alone"
        );
    }
}

#[test]
fn fc_update_in_backward_matches_linear_gemms_and_the_unfused_update() {
    let _s = common::serial(); // seeded inputs
    tch::manual_seed(4);
    let opts = (Kind::Float, Device::Cpu);
    let (lr, m) = (0.05, 0.9);
    // (batch, rows, columns): fewer row blocks of 4 than threads (an idle thread's dx tile is left
    // out); rows not a multiple of 4 and columns not of 16; at batch 32, 8200 columns make two
    // column tiles.
    for (batch, n, k) in [(2i64, 3i64, 40i64), (1, 6, 37), (16, 10, 300), (32, 9, 8200)] {
        for paper in [false, true] {
            for wd in [0.0, 5e-4] {
                let x0 = Tensor::randn([batch, k], opts);
                let w0 = Tensor::randn([n, k], opts) * 0.1;
                let b0 = Tensor::randn([n], opts);
                let v0 = Tensor::randn([n, k], opts) * 0.01;
                let dy = Tensor::randn([batch, n], opts);
                let (x, w, b, v) = (
                    x0.copy().set_requires_grad(true),
                    w0.copy().set_requires_grad(true),
                    b0.copy().set_requires_grad(true),
                    v0.copy(),
                );
                let Some(y) = ops::linear_sgd(&x, &w, &b, &v, lr, m, wd, paper).unwrap() else {
                    assert!(
                        !std::arch::is_x86_feature_detected!("avx512f"),
                        "refused on an AVX-512 CPU"
                    );
                    eprintln!("skipped: this CPU has no AVX-512, the fused FC backward is not used");
                    return;
                };
                let case = format!("batch {batch}, {n}x{k}, paper {paper}, wd {wd}");
                assert!(max_rel_err(&y, &x0.linear(&w0, Some(&b0))) <= 1e-6, "y ({case})");
                (&y * &dy).sum(Kind::Float).backward();
                assert!(max_rel_err(&x.grad(), &dy.mm(&w0)) <= 1e-5, "dx ({case})");
                assert!(
                    max_rel_err(&b.grad(), &dy.sum_dim_intlist(0, false, Kind::Float)) <= 1e-6,
                    "db ({case})"
                );
                assert!(!w.grad().defined(), "w gets no gradient ({case})");
                let (wr, vr) = sgd_reference(&w0, &dy.tr().mm(&x0), &v0, lr, m, wd, paper);
                assert!(max_rel_err(&w.detach(), &wr) <= 1e-5, "w ({case})");
                assert!(max_rel_err(&v, &vr) <= 1e-5, "v ({case})");
                assert!(max_rel_err(&w.detach(), &w0) > 1e-4, "w moved ({case})");
            }
        }
    }
    // An input that needs no gradient (every layer below frozen): the weight is still updated.
    let (x, w, b) = (
        Tensor::randn([4, 20], opts),
        Tensor::randn([3, 20], opts).set_requires_grad(true),
        Tensor::randn([3], opts),
    );
    let (w0, v) = (w.detach().copy(), w.detach().zeros_like());
    let y = ops::linear_sgd(&x, &w, &b, &v, lr, m, 0.0, false)
        .unwrap()
        .expect("qualifies");
    y.sum(Kind::Float).backward();
    let g = Tensor::ones([4, 3], opts).tr().mm(&x);
    assert!(max_rel_err(&v, &g) <= 1e-6, "v = g after one step from v = 0");
    assert!(max_rel_err(&w.detach(), &(&w0 - &g * lr)) <= 1e-6, "w -= lr g");
    // What the fused backward does not take: plain F.linear and the ordinary update instead.
    let (x, w, b) = (
        Tensor::randn([33, 8], opts),
        Tensor::randn([4, 8], opts).set_requires_grad(true),
        Tensor::randn([4], opts),
    );
    let v = w.detach().zeros_like();
    assert!(
        ops::linear_sgd(&x, &w, &b, &v, lr, m, 0.0, false).unwrap().is_none(),
        "batch 33"
    );
    let x = x.narrow(0, 0, 4);
    let frozen = w.detach();
    assert!(
        ops::linear_sgd(&x, &frozen, &b, &v, lr, m, 0.0, false)
            .unwrap()
            .is_none(),
        "frozen w"
    );
    let xd = x.to_kind(Kind::Double);
    let wd_ = w.detach().to_kind(Kind::Double).set_requires_grad(true);
    let (bd, vd) = (b.to_kind(Kind::Double), v.to_kind(Kind::Double));
    assert!(
        ops::linear_sgd(&xd, &wd_, &bd, &vd, lr, m, 0.0, false)
            .unwrap()
            .is_none(),
        "float64"
    );
    // No columns (K = 0): the backward's tiling divided by zero (SIGFPE).
    let (x0, w0) = (
        Tensor::zeros([2, 0], opts),
        Tensor::zeros([3, 0], opts).set_requires_grad(true),
    );
    let v0 = w0.detach().zeros_like();
    let b3 = Tensor::zeros([3], opts);
    assert!(
        ops::linear_sgd(&x0, &w0, &b3, &v0, lr, m, 0.0, false)
            .unwrap()
            .is_none(),
        "K = 0"
    );
    // Tensors sharing memory (the velocity is the weight, the input is the weight): refused.
    let sq = Tensor::randn([4, 4], opts).set_requires_grad(true);
    let b4 = Tensor::randn([4], opts);
    assert!(
        ops::linear_sgd(&x, &w, &b, &w.detach(), lr, m, 0.0, false)
            .unwrap()
            .is_none(),
        "v = w"
    );
    assert!(
        ops::linear_sgd(&sq.detach(), &sq, &b4, &sq.detach().zeros_like(), lr, m, 0.0, false)
            .unwrap()
            .is_none(),
        "x = w"
    );
    let _no_grad = tch::no_grad_guard();
    assert!(
        ops::linear_sgd(&x, &w, &b, &v, lr, m, 0.0, false).unwrap().is_none(),
        "no grad mode"
    );
}

#[test]
fn a_training_step_with_the_fc_update_in_backward_equals_the_step_after_backward() {
    let _s = common::serial(); // seeded init and dropout masks
                               // The paper network on two CPU "devices": its FC layers are row shards, each updated by its
                               // own backward; everything else by Sgd::step. Both rules, so the scalars reach the kernel.
    let mut cfg = Config::preset(Preset::Paper, 10).unwrap();
    cfg.input_size = 63;
    let placement = Placement::parse("cpu,cpu").unwrap();
    tch::manual_seed(5);
    let whole = model::init_whole(&cfg).unwrap();
    let x = Tensor::randn([8, 3, 63, 63], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
    for rule in [UpdateRule::Pytorch, UpdateRule::Paper] {
        let step = |fused: bool| {
            let params = model::shard(&cfg, &placement, &whole, false).unwrap();
            let mut sgd = Sgd::new(&params, rule, 0.9, 5e-4);
            let mut fc_done = 0;
            for lr in [0.01, 0.02] {
                // The same velocity state at the second step: its lr differs (paper's rule).
                tch::manual_seed(6);
                let update = fused.then(|| sgd.in_backward(&params, lr));
                let logits =
                    model::forward_masked(&cfg, &params, &x, Some(model::Masks::Torch), update.as_ref()).unwrap();
                logits.cross_entropy_for_logits(&y).backward();
                fc_done = params
                    .iter_shards()
                    .filter(|(n, _, p)| n.starts_with("fc") && n.ends_with(".weight") && !p.grad().defined())
                    .count();
                sgd.step(&params, lr, update.as_ref()).unwrap();
            }
            (params.gather_cpu().unwrap(), fc_done)
        };
        let ((fused, fc_done), (plain, fc_plain)) = (step(true), step(false));
        if fc_done == 0 {
            assert!(
                !std::arch::is_x86_feature_detected!("avx512f"),
                "not fused on an AVX-512 CPU"
            );
            eprintln!("skipped: this CPU has no AVX-512, the fused FC backward is not used");
            return;
        }
        assert_eq!(
            (fc_done, fc_plain),
            (5, 0),
            "fc6, fc7: two shards each, fc8 whole ({rule:?})"
        );
        for (name, p) in &plain {
            assert!(!p.equal(&whole[name]), "{name} was updated ({rule:?})");
            let err = max_rel_err(&fused[name], p);
            assert!(err <= 1e-5, "{name}: {err:.2e} ({rule:?})");
        }
    }
}

#[test]
fn cpu_cache_reuses_blocks_inside_its_scope_and_holds_nothing_after() {
    let _s = common::serial(); // draws from torch's generator
    let opts = (Kind::Float, Device::Cpu);
    let before = ops::cpu_cache_stats();
    {
        let scope = ops::CpuCacheScope::new();
        assert!(scope.active());
        for i in 0..4 {
            // 4 MB blocks, freed each round: after the first, served from the cache.
            let a = Tensor::full([1 << 20], i as f64, opts);
            let b = &a + 1.0;
            assert_eq!(b.double_value(&[123]), i as f64 + 1.0);
        }
        let s = ops::cpu_cache_stats();
        assert!(s.hits - before.hits >= 4, "{s:?}");
        assert!(s.cached_bytes > 0, "{s:?}");
        // Small tensors never go through the cache.
        let small = Tensor::ones([16], opts);
        assert_eq!(small.sum(Kind::Float).double_value(&[]), 16.0);
    }
    let after = ops::cpu_cache_stats();
    assert_eq!(after.cached_bytes, 0, "the last scope's end frees the cached blocks");
    // Outside any scope the allocator is PyTorch's: nothing counted.
    let t = Tensor::ones([1 << 21], opts);
    assert_eq!(ops::cpu_cache_stats().misses, after.misses);
    drop(t);
}
