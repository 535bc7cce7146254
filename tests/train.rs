//! Training: bit-exact resume, checkpoints that survive SIGKILL mid-write, refused foreign or
//! truncated checkpoints, and the two-device placement computing the same losses as one device.
//! Runs on Fashion-MNIST (Debian's dataset-fashion-mnist, installed by `make setup`).
use alexnet_rs::checkpoint;
use alexnet_rs::metrics::Metrics;
use alexnet_rs::model::{self, init_params};
use alexnet_rs::placement::Placement;
use alexnet_rs::train::{train, TrainConfig};
use alexnet_rs::{Config, Preset};
use std::path::Path;
use tch::{Device, Kind, Tensor};

mod common;
use common::{require_data, serial, tmp};

/// A small, fast run: torchvision preset at 63x63, 256 training samples, batches of 32.
fn small(out: &Path) -> TrainConfig {
    TrainConfig {
        preset: alexnet_rs::Preset::Torchvision,
        input_size: 63,
        batch_size: 32,
        epochs: 2,
        lr: 0.01,
        seed: 5,
        out: out.to_path_buf(),
        limit_train: Some(256),
        limit_test: Some(64),
        threads: 2,
        keep: 2,
        ..TrainConfig::default()
    }
}

fn losses(run: &Path) -> Vec<f64> {
    Metrics::existing(run).steps().unwrap().iter().map(|r| r.loss).collect()
}

#[test]
fn interrupted_and_resumed_run_has_a_bit_identical_loss_curve() {
    let _s = serial();
    require_data();
    let (a, b) = (tmp("whole"), tmp("pieces"));
    train(&small(&a), None, &mut |_| {}, &|| false).unwrap();
    // Stop mid-epoch 0, then mid-epoch 1, then finish.
    train(
        &TrainConfig {
            max_steps: Some(5),
            ..small(&b)
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    train(
        &TrainConfig {
            max_steps: Some(6),
            ..small(&b)
        },
        Some(&b),
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    train(&small(&b), Some(&b), &mut |_| {}, &|| false).unwrap();
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 16);
    assert_eq!(la, lb, "loss curves differ");
    let wa = checkpoint::load(&a).unwrap().weights;
    let wb = checkpoint::load(&b).unwrap().weights;
    for (k, t) in &wa {
        assert!(t.equal(&wb[k]), "{k} differs");
    }
    assert!(a.join("curves.png").is_file() && a.join("epochs.csv").is_file() && a.join("classes.json").is_file());
}

#[test]
fn sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable() {
    let _s = serial();
    require_data();
    // Deterministic: the fault hook aborts the process (no unwinding, no cleanup, as SIGKILL)
    // once the second checkpoint's temporary folder is written, before it is renamed.
    let run = tmp("kill");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args([
            "train",
            "--preset",
            "torchvision",
            "--input-size",
            "63",
            "--batch-size",
            "16",
        ])
        .args([
            "--epochs",
            "1",
            "--limit-train",
            "320",
            "--limit-test",
            "32",
            "--checkpoint-every",
            "1",
        ])
        .args(["--keep", "2", "--out"])
        .arg(&run)
        .env("ALEXNET_FAULT", "ckpt-tmp-written:abort@2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let root = run.join("checkpoints");
    assert!(root.join("ckpt-000000001/state.json").is_file());
    assert!(root.join(".ckpt-000000002.tmp").is_dir() && !root.join("ckpt-000000002").exists());
    let c = checkpoint::load(&run).expect("a complete checkpoint loads");
    assert!(c.state.step >= 1);
    // And training resumes from it.
    let resumed = TrainConfig {
        max_steps: Some(1),
        ..small(&run)
    };
    train(&resumed, Some(&run), &mut |_| {}, &|| false).unwrap();
}

#[test]
fn truncated_and_foreign_checkpoints_are_refused() {
    let _s = serial();
    require_data();
    let run = tmp("refuse");
    train(
        &TrainConfig {
            max_steps: Some(1),
            ..small(&run)
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    let dir = checkpoint::find_latest(&run).unwrap();
    let w = dir.join("weights.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&run)
        .err()
        .expect("truncated weights must be refused")
        .to_string();
    assert!(
        e.contains("weights.safetensors") && e.contains("truncated or foreign"),
        "{e}"
    );
    // A safetensors file of another network.
    Tensor::write_safetensors(
        &[("conv1.weight", Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)))],
        &w,
    )
    .unwrap();
    let e = checkpoint::load(&run)
        .err()
        .expect("foreign weights must be refused")
        .to_string();
    assert!(e.contains("features.0.weight"), "{e}");
    std::fs::write(dir.join("state.json"), "{}").unwrap();
    assert!(checkpoint::load(&run).err().unwrap().to_string().contains("state.json"));
}

#[test]
fn a_batch_larger_than_the_training_set_is_refused_naming_both() {
    let _s = serial();
    require_data();
    let run = tmp("no-batch");
    let e = train(
        &TrainConfig {
            batch_size: 300,
            ..small(&run)
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .expect_err("an epoch without a step must be refused")
    .to_string();
    assert!(
        e.contains("no training batch: its 256 samples make no full batch of 300"),
        "{e}"
    );
    assert!(checkpoint::find_latest(&run).is_err(), "nothing to resume was written");
}

#[test]
fn two_device_placement_computes_the_same_function() {
    let _s = serial();
    // Forward and gradients of the paper network, whole on one CPU "device" and split over two.
    tch::manual_seed(0);
    let cfg = Config::preset(Preset::Paper, 10).unwrap();
    let whole = model::init_whole(&cfg).unwrap();
    let one = model::shard(&cfg, &Placement::single(Device::Cpu), &whole, false).unwrap();
    let two_p = Placement::parse("cpu,cpu").unwrap();
    let two = model::shard(&cfg, &two_p, &whole, false).unwrap();
    // Every shard is where (and as large as) the table says.
    for sh in two_p.shards(&cfg).unwrap() {
        let t = &two.shards(&sh.name).unwrap()[sh.slot];
        assert_eq!(t.size()[0], sh.rows.end - sh.rows.start, "{}", sh.name);
        assert_eq!(t.device(), sh.device);
    }
    let x = Tensor::randn([3, 3, 224, 224], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[1i64, 4, 7]);
    let run = |p: &model::Params| {
        tch::manual_seed(42); // the same dropout masks
        let out = model::forward(&cfg, p, &x, true).unwrap();
        let loss = out.cross_entropy_for_logits(&y);
        loss.backward();
        (loss.double_value(&[]), p.gather_cpu().unwrap())
    };
    let (l1, _) = run(&one);
    let (l2, _) = run(&two);
    assert!((l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0), "loss {l1} vs {l2}");
    for name in one.names() {
        let g1 = one.get(name).unwrap().grad();
        let parts: Vec<Tensor> = two.shards(name).unwrap().iter().map(|t| t.grad()).collect();
        let g2 = Tensor::cat(&parts, 0);
        let scale = g1.abs().max().double_value(&[]).max(1e-12);
        let diff = (&g1 - &g2).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4 * scale,
            "{name}: gradient differs by {diff} (scale {scale})"
        );
    }
    let _ = init_params(&cfg, &two_p).unwrap();
}

#[test]
fn cpu_cpu_training_follows_cpu_training() {
    let _s = serial();
    require_data();
    let (a, b) = (tmp("one-dev"), tmp("two-dev"));
    let base = |out: &Path, devices: &str| TrainConfig {
        preset: alexnet_rs::Preset::Paper,
        input_size: 224,
        batch_size: 4,
        epochs: 1,
        limit_train: Some(16),
        limit_test: Some(4),
        devices: devices.into(),
        out: out.to_path_buf(),
        lr: 1e-3,
        seed: 3,
        threads: 2,
        ..TrainConfig::default()
    };
    train(&base(&a, "cpu"), None, &mut |_| {}, &|| false).unwrap();
    train(&base(&b, "cpu,cpu"), None, &mut |_| {}, &|| false).unwrap();
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 4);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
}

#[test]
fn resume_without_out_continues_in_the_run_folder() {
    let _s = serial();
    require_data();
    let run = tmp("resume-here");
    train(
        &TrainConfig {
            max_steps: Some(2),
            ..small(&run)
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    // As `alexnet train --resume RUN --max-steps 1` with no --out: TrainConfig's default out.
    let flags = TrainConfig {
        max_steps: Some(1),
        ..TrainConfig::default()
    };
    train(&flags, Some(&run), &mut |_| {}, &|| false).unwrap();
    assert_eq!(checkpoint::load(&run).unwrap().state.step, 3);
    assert_eq!(losses(&run).len(), 3);
}

#[test]
fn a_query_from_the_training_images_is_not_its_own_neighbour() {
    // A folder without val/: its test split is its training images, and `neighbours --test`
    // found each query itself at distance 0 (counted as a neighbour of its class).
    let _s = serial();
    let root = tmp("nn-self");
    let data = root.join("data");
    for c in 0..2u8 {
        let d = data.join(format!("c{c}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..6u8 {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([c * 120 + i * 9, (x * 13 + y * 7) as u8 ^ (i * 31), i * 40])
            });
            img.save(d.join(format!("{i}.png"))).unwrap();
        }
    }
    let run = root.join("run");
    let tc = TrainConfig {
        preset: Preset::Torchvision,
        input_size: 63,
        batch_size: 4,
        max_steps: Some(1),
        data: Some(data.clone()),
        out: run.clone(),
        threads: 1,
        ..TrainConfig::default()
    };
    train(&tc, None, &mut |_| {}, &|| false).unwrap();
    let n =
        alexnet_rs::train::neighbours(&run, None, alexnet_rs::train::Queries::Test(4), 3, "cpu", &|_, _| {}).unwrap();
    for (i, q) in n.queries.iter().enumerate() {
        let found: Vec<usize> = q.neighbours.iter().map(|&(idx, _, _)| idx).collect();
        assert!(
            found.len() == 3 && !found.contains(&i),
            "test #{i} (training image {i}) found {found:?}"
        );
    }
    // A training image named as a file (by another spelling of its path): not its own either.
    let file = data.join("c0").join(".").join("2.png");
    let n = alexnet_rs::train::neighbours(
        &run,
        None,
        alexnet_rs::train::Queries::Files(vec![file]),
        3,
        "cpu",
        &|_, _| {},
    )
    .unwrap();
    let own = n
        .train
        .items
        .iter()
        .position(|(s, _)| matches!(s, alexnet_rs::data::Sample::File(p) if p.ends_with("c0/2.png")));
    let found: Vec<usize> = n.queries[0].neighbours.iter().map(|&(idx, _, _)| idx).collect();
    assert!(
        found.len() == 3 && !found.contains(&own.unwrap()),
        "c0/2.png found {found:?}"
    );
}

#[test]
fn evaluation_ranks_and_scores_confident_outputs_without_underflow() {
    // The softmax averaged in float32 underflowed to exact 0 for every class but the top one:
    // top-5 ranked ties arbitrarily and the loss was capped at -ln(1e-12) = 27.6.
    let fashion = require_data();
    let cfg = Config {
        input_size: 28,
        ..Config::preset(Preset::Cnn4, 10).unwrap()
    };
    let params = init_params(&cfg, &Placement::single(Device::Cpu)).unwrap();
    let bias: Vec<f32> = vec![200.0, 90.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 20.0, 10.0];
    tch::no_grad(|| {
        let _ = params.get("fc4.weight").unwrap().shallow_clone().zero_();
        params
            .get("fc4.bias")
            .unwrap()
            .shallow_clone()
            .copy_(&Tensor::from_slice(&bias));
    });
    let ds = alexnet_rs::data::Dataset::open(&fashion, alexnet_rs::data::Split::Test)
        .unwrap()
        .subset(64, 1);
    let labels: Vec<i64> = ds.items.iter().map(|(_, l)| *l).collect();
    let tc = TrainConfig {
        preset: Preset::Cnn4,
        input_size: 28,
        ..TrainConfig::default()
    };
    let loader = tc.loader(ds, alexnet_rs::data::View::Center, false).unwrap();
    let r = alexnet_rs::train::evaluate(&cfg, &params, &loader).unwrap();
    // The reference in float64: every image's logits are the bias.
    let lse = 200.0 + bias.iter().map(|&b| (f64::from(b) - 200.0).exp()).sum::<f64>().ln();
    let n = labels.len() as f64;
    let loss = labels.iter().map(|&l| lse - f64::from(bias[l as usize])).sum::<f64>() / n;
    let top5 = labels.iter().filter(|&&l| l < 5).count() as f64 / n;
    let top1 = labels.iter().filter(|&&l| l == 0).count() as f64 / n;
    assert!((r.loss - loss).abs() < 1e-3 * loss, "loss {} vs {loss}", r.loss);
    assert_eq!((r.top1, r.top5), (top1, top5));
}
