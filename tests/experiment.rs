//! Ablation switches and `alexnet experiment`: the Fig. 1 network against a hand-written tch
//! composition, each switch's effect on the network, the 0-255 input scale of paper/caffe, the
//! non-finite-loss guard, and the experiment runner (early stop at the target, reuse of finished
//! runs, summaries).
use alexnet_rs::config::{Activation, Init};
use alexnet_rs::data::rng::Rng;
use alexnet_rs::data::{Transform, View};
use alexnet_rs::experiment::{self, Experiment, ERROR_WINDOW};
use alexnet_rs::image::{IMAGENET_MEAN, IMAGENET_STD};
use alexnet_rs::placement::Placement;
use alexnet_rs::train::{train, TrainConfig};
use alexnet_rs::{checkpoint, model, Config, Error, Preset};
use tch::{Kind, Tensor};

mod common;
use common::{require_data, serial, tmp};

/// The experiment's defaults cut to one epoch of `limit` training images in batches of 32.
fn tiny(exp: Experiment, root: &std::path::Path, limit: usize) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 32,
        limit_train: Some(limit),
        limit_test: Some(64),
        threads: 2,
        out: root.to_path_buf(),
        ..exp.defaults()
    }
}

#[test]
fn cnn4_forward_equals_a_stock_composition_with_relu_and_tanh() {
    let _g = serial();
    for act in [Activation::Relu, Activation::Tanh] {
        let mut cfg = Config::preset(Preset::Cnn4, 10).unwrap();
        (cfg.activation, cfg.input_size) = (act, 28);
        tch::manual_seed(1);
        let params = model::init_params(&cfg, &Placement::parse("cpu").unwrap()).unwrap();
        let x = Tensor::randn([3, 3, 28, 28], (Kind::Float, tch::Device::Cpu));
        let ours = model::forward(&cfg, &params, &x, false).unwrap();
        let p = |n: &str| params.get(n).unwrap().shallow_clone();
        let f = |t: Tensor| if act == Activation::Relu { t.relu() } else { t.tanh() };
        let mut h = x.shallow_clone();
        for c in ["conv1", "conv2", "conv3"] {
            let w = p(&format!("{c}.weight"));
            let b = p(&format!("{c}.bias"));
            h = f(h.conv2d(&w, Some(&b), [1, 1], [2, 2], [1, 1], 1)).max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        }
        // 28 -> 13 -> 6 -> 2: the head is sized for the input.
        assert_eq!(h.size(), [3, 64, 2, 2]);
        let reference = h.flatten(1, -1).linear(&p("fc4.weight"), Some(&p("fc4.bias")));
        let diff = (&ours - &reference).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{act:?}: max |ours - reference| = {diff}");
    }
}

#[test]
fn ablation_switches_change_exactly_what_they_name() {
    let _g = serial();
    let base = TrainConfig {
        preset: alexnet_rs::Preset::Paper,
        input_size: 63,
        ..TrainConfig::default()
    };
    let plain = base.model_config(10).unwrap();
    assert_eq!(plain.convs.iter().filter(|c| c.lrn).count(), 2);
    // The head follows the input: 63 -> 15 -> 7 -> 3 -> 3 -> 1, so fc6 reads 256 features.
    assert_eq!(
        plain.param_shapes().iter().find(|(n, _)| n == "fc6.weight").unwrap().1,
        [4096, 256]
    );

    let t = TrainConfig {
        lrn: false,
        pool_kernel: Some(2),
        dropout: Some(0.0),
        torch_init: true,
        activation: Activation::Tanh,
        ..base.clone()
    };
    let cfg = t.model_config(10).unwrap();
    assert!(cfg.convs.iter().all(|c| !c.lrn));
    assert_eq!((cfg.pool.kernel, cfg.pool.stride), (2, 2));
    assert_eq!(cfg.dropout, 0.0);
    assert_eq!(cfg.activation, Activation::Tanh);
    assert!(cfg.convs.iter().all(|c| c.init == Init::TorchDefault));
    assert!(cfg.fcs.iter().all(|f| f.init == Init::TorchDefault));
    // Section 3.4: non-overlapping 2x2/2 pooling keeps the output sizes of 3x3/2, at 224 and 63.
    for side in [224, 63] {
        assert_eq!(cfg.spatial_sizes(side).unwrap(), plain.spatial_sizes(side).unwrap());
    }
    // Dropout 0: two training-mode forwards with different dropout seeds agree.
    let params = model::init_params(&cfg, &Placement::parse("cpu").unwrap()).unwrap();
    let x = Tensor::randn([2, 3, 63, 63], (Kind::Float, tch::Device::Cpu));
    tch::manual_seed(1);
    let a = model::forward(&cfg, &params, &x, true).unwrap();
    tch::manual_seed(2);
    let b = model::forward(&cfg, &params, &x, true).unwrap();
    assert!(a.equal(&b));
    // ... and with the preset's 0.5 they do not.
    let cfg = base.model_config(10).unwrap();
    let params = model::init_params(&cfg, &Placement::parse("cpu").unwrap()).unwrap();
    tch::manual_seed(1);
    let a = model::forward(&cfg, &params, &x, true).unwrap();
    tch::manual_seed(2);
    let b = model::forward(&cfg, &params, &x, true).unwrap();
    assert!(!a.equal(&b));

    for (bad, what) in [
        (
            TrainConfig {
                dropout: Some(1.0),
                ..base.clone()
            },
            "dropout",
        ),
        (
            TrainConfig {
                pool_kernel: Some(0),
                ..base.clone()
            },
            "pool_kernel",
        ),
    ] {
        match bad.model_config(10) {
            Err(Error::Config(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("expected a config error naming {what}, got {other:?}"),
        }
    }
}

#[test]
fn paper_and_caffe_see_0_to_255_values_minus_the_mean() {
    let img = image::RgbImage::from_pixel(40, 40, image::Rgb([200, 100, 50]));
    let px = [200.0f32, 100.0, 50.0];
    for preset in [Preset::Paper, Preset::Caffe, Preset::Torchvision] {
        let tf = Transform::for_preset(preset, 32, View::Center, None);
        let mut out = vec![0f32; tf.view_len()];
        tf.apply(&img, &mut Rng::new(0), &mut out).unwrap();
        for c in 0..3 {
            let want = match preset {
                Preset::Torchvision => (px[c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c],
                _ => px[c] - 255.0 * IMAGENET_MEAN[c],
            };
            let got = out[c * 32 * 32 + 100];
            assert!((got - want).abs() <= 1e-3, "{preset} channel {c}: {got} != {want}");
        }
    }
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    require_data();
    let _g = serial();
    let out = tmp("diverge");
    let tc = TrainConfig {
        preset: alexnet_rs::Preset::Cnn4,
        input_size: 28,
        batch_size: 32,
        epochs: 1,
        lr: 1e30,
        out: out.to_path_buf(),
        limit_train: Some(320),
        limit_test: Some(32),
        checkpoint_every: 1,
        threads: 2,
        ..TrainConfig::default()
    };
    match train(&tc, None, &mut |_| {}, &|| false) {
        Err(e @ Error::Diverged { .. }) => {
            let Error::Diverged { step, loss, .. } = &e else {
                unreachable!()
            };
            assert!(!loss.is_finite());
            assert!(*step >= 1, "the first loss (at init) is finite");
            assert!(e.to_string().contains("try a lower --lr"), "{e}");
            let c = checkpoint::load(&out).unwrap();
            assert_eq!(c.state.step, *step - 1, "the newest checkpoint is the last good step");
            assert!(e.to_string().contains(&format!("at step {step}")), "{e}");
        }
        other => panic!("expected Error::Diverged, got {other:?}"),
    }
}

#[test]
fn fig1_runs_stop_at_the_target_and_finished_runs_are_reused() {
    require_data();
    let _g = serial();
    let root = tmp("fig1");
    let base = tiny(Experiment::ReluVsTanh, &root, 1280);
    // 99 % training error is met as soon as the first window is full (the early stop); at 80 %
    // the arms differ (on 1,280 images at lr 0.1 tanh gets there first, 10-11 steps vs 15).
    let targets = [0.99, 0.8];
    let s = experiment::run(Experiment::ReluVsTanh, &base, 2, &[0.1], &targets).unwrap();
    assert_eq!(s.arms.len(), 2);
    for arm in &s.arms {
        assert_eq!(arm.runs.len(), 2);
        for r in &arm.runs {
            assert_eq!(r.steps_to_target[0], Some(ERROR_WINDOW as u64));
            let last = r.steps_to_target[1].expect("80 % reached within the epoch");
            assert_eq!(r.steps, last, "the run stops once every target is met");
            assert!(r.test_top1_error.is_some());
            assert!(
                !r.config.out.join("checkpoints").exists(),
                "experiment runs keep no weights"
            );
        }
    }
    assert_eq!(s.arms[0].runs[0].config.activation, Activation::Relu);
    assert_eq!(s.arms[1].runs[0].config.activation, Activation::Tanh);
    assert_ne!(s.arms[0].runs[0].config.seed, s.arms[0].runs[1].config.seed);
    let mean = |arm: usize, t: usize| {
        s.arms[arm]
            .runs
            .iter()
            .map(|r| r.steps_to_target[t].unwrap() as f64)
            .sum::<f64>()
            / 2.0
    };
    assert_ne!(mean(0, 1), mean(1, 1), "the 80 % target separates the arms");
    let md = std::fs::read_to_string(root.join("relu-vs-tanh.md")).unwrap();
    assert!(md.contains("| relu | 0.1 | 10, 10 | 10 |"), "{md}");
    // The summary's ratio is the records' mean tanh steps over mean ReLU steps, at each target.
    for (t, goal) in [(0, 99), (1, 80)] {
        let line = format!(
            "{goal} % training error: best rates relu 0.1 ({:.0} steps), tanh 0.1 ({:.0} steps): tanh needs {:.2}x \
             the steps of ReLU.",
            mean(0, t),
            mean(1, t),
            mean(1, t) / mean(0, t)
        );
        assert!(md.contains(&line), "{line}\n{md}");
    }
    // Rerunning reuses every finished run (same settings): identical records, timing included.
    let again = experiment::run(Experiment::ReluVsTanh, &base, 2, &[0.1], &targets).unwrap();
    for (a, b) in s.arms.iter().zip(&again.arms) {
        for (x, y) in a.runs.iter().zip(&b.runs) {
            assert_eq!(x.seconds, y.seconds);
        }
    }
}

#[test]
fn ablation_summary_pairs_the_arms_by_seed() {
    require_data();
    let _g = serial();
    let root = tmp("lrn");
    let base = tiny(Experiment::Lrn, &root, 128);
    let s = experiment::run(Experiment::Lrn, &base, 2, &[], &[]).unwrap();
    let [with, without] = &s.arms[..] else {
        panic!("two arms")
    };
    assert!(with.runs.iter().all(|r| r.config.lrn));
    assert!(without.runs.iter().all(|r| !r.config.lrn));
    let err = |r: &experiment::RunResult| r.test_top1_error.unwrap();
    let deltas: Vec<f64> = with
        .runs
        .iter()
        .zip(&without.runs)
        .map(|(a, b)| err(a) - err(b))
        .collect();
    let (m, sd) = experiment::mean_std(&deltas);
    let row = format!(
        "| Δ (with LRN − without LRN), paired by seed | 2 | {:.2} ± {:.2} |",
        100.0 * m,
        100.0 * sd
    );
    assert!(s.markdown.contains(&row), "{}\nmissing: {row}", s.markdown);
    assert!(root.join("lrn.json").is_file());
}

/// `alexnet experiment relu-vs-tanh`, one seed at lr 0.1, tiny, into `root` (with `fault`).
fn fig1_cli(root: &std::path::Path, fault: Option<&str>) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_alexnet"));
    c.args([
        "experiment",
        "relu-vs-tanh",
        "--seeds",
        "1",
        "--lrs",
        "0.1",
        "--target-errors",
        "0.99,0.8",
    ]);
    c.args([
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--limit-train",
        "1280",
        "--limit-test",
        "64",
        "--threads",
    ]);
    c.args(["2", "--checkpoint-every", "4", "--out"]).arg(root);
    match fault {
        Some(f) => c.env("ALEXNET_FAULT", f),
        None => c.env_remove("ALEXNET_FAULT"),
    };
    c.output().unwrap()
}

/// Each run's result.json with its timing left out.
fn results(root: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = walk(root).into_iter().filter(|p| p.ends_with("result.json")).collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v["config"]["out"] = serde_json::Value::Null;
            v
        })
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        match e.path().is_dir() {
            true => out.extend(walk(&e.path())),
            false => out.push(e.path()),
        }
    }
    out
}

#[test]
fn an_interrupted_experiment_continues_its_runs_and_keeps_finished_ones() {
    require_data();
    let _g = serial();
    let reference = tmp("fig1-whole");
    assert!(fig1_cli(&reference, None).status.success());
    // Killed after a run's second checkpoint: the rerun deleted the run and trained it again from
    // step 1; it continues from step 8 now, to the same records.
    let killed = tmp("fig1-killed");
    assert!(!fig1_cli(&killed, Some("ckpt-renamed:kill@2")).status.success());
    let again = fig1_cli(&killed, None);
    let said = String::from_utf8_lossy(&again.stdout).to_string() + &String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success() && said.contains("from its checkpoint at step 8"),
        "{said}"
    );
    assert_eq!(results(&killed), results(&reference));
    // Rerun over an unreadable metrics line or checkpoint state: the run was deleted, its saved
    // steps trained again from step 1, in silence. Now the line is dropped (as a resume drops
    // it, saying so) and the run continues; a state this build cannot read is an error naming
    // it, the run left as it is.
    let damaged = tmp("fig1-damaged");
    assert!(!fig1_cli(&damaged, Some("ckpt-renamed:kill@2")).status.success());
    let files = walk(&damaged);
    let state = files
        .iter()
        .filter(|p| p.ends_with("state.json"))
        .max()
        .unwrap()
        .clone();
    let good_state = std::fs::read(&state).unwrap();
    std::fs::write(&state, "{\"format\": ").unwrap();
    let refused = fig1_cli(&damaged, None);
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success() && said.contains(&state.display().to_string()),
        "{said}"
    );
    let kept = |p: &&std::path::PathBuf| p.to_string_lossy().contains("ckpt-") || p.ends_with("metrics.jsonl");
    assert!(files.iter().filter(kept).all(|p| p.exists()), "{files:?}");
    std::fs::write(&state, good_state).unwrap();
    let steps = files.iter().find(|p| p.ends_with("metrics.jsonl")).unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(steps)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines[2] = "garbage".into();
    std::fs::write(steps, lines.join("\n") + "\n").unwrap();
    let again = fig1_cli(&damaged, None);
    let said = String::from_utf8_lossy(&again.stdout).to_string() + &String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success()
            && said.contains("from its checkpoint at step 8")
            && said.contains("line 3 is unreadable"),
        "{said}"
    );
    // Killed after the checkpoint of the step that met every target (during the final
    // evaluation): continued, it would train one step more; it starts again instead.
    let met = tmp("fig1-met");
    assert!(!fig1_cli(&met, Some("ckpt-renamed:kill@4")).status.success()); // relu: steps 4, 8, 12, 15
    let again = fig1_cli(&met, None);
    assert!(again.status.success() && !String::from_utf8_lossy(&again.stdout).contains("continuing"));
    assert_eq!(results(&met), results(&reference));
    // Killed between a finished run's result and the deletion of its checkpoints: the result is
    // there and is reused (the checkpoints went first, and a rerun trained the run again).
    let late = tmp("fig1-late");
    assert!(!fig1_cli(&late, Some("experiment-result-written:kill@1"))
        .status
        .success());
    let again = fig1_cli(&late, None);
    let said = String::from_utf8_lossy(&again.stdout).to_string() + &String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && said.contains("reusing"), "{said}");
    assert_eq!(results(&late), results(&reference));
}

#[test]
fn settings_that_would_void_the_comparison_are_refused_before_any_run() {
    let root = tmp("void");
    let base = |exp: Experiment| tiny(exp, &root, 64);
    // The switch an experiment varies, given by the caller, was overridden by the arms in silence
    // (the table still said "dropout 0.5").
    let mut t = base(Experiment::Dropout);
    t.dropout = Some(0.3);
    t.given = alexnet_rs::settings::Given(Some(["dropout".to_string()].into()));
    let e = experiment::run(Experiment::Dropout, &t, 1, &[], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--dropout") && e.contains("dropout experiment sets it"),
        "{e}"
    );
    // A preset without LRN: both arms of `lrn` are one network ("Δ 0.00" reported as a result).
    let t = TrainConfig {
        preset: Preset::Torchvision,
        ..base(Experiment::Lrn)
    };
    let e = experiment::run(Experiment::Lrn, &t, 1, &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("the same network") && e.contains("torchvision"), "{e}");
    // Seeds past the largest one wrapped around to 0.
    let t = TrainConfig {
        seed: u64::MAX,
        ..base(Experiment::Lrn)
    };
    let e = experiment::run(Experiment::Lrn, &t, 2, &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--seed") && e.contains("--seeds"), "{e}");
    assert!(!root.join("lrn.md").exists() && std::fs::read_dir(&root).map_or(0, |d| d.count()) == 0);
}

#[test]
fn bad_experiment_settings_are_refused() {
    let base = Experiment::ReluVsTanh.defaults();
    for (seeds, targets) in [(0, vec![0.25]), (1, vec![]), (1, vec![1.5])] {
        assert!(matches!(
            experiment::run(Experiment::ReluVsTanh, &base, seeds, &[], &targets),
            Err(Error::Config(_))
        ));
    }
    assert!(matches!("nope".parse::<Experiment>(), Err(Error::Config(_))));
}
