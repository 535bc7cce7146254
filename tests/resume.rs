//! Resuming after a kill, a stop or a full disk: the metrics history is kept byte for byte, the
//! interrupted epoch's row equals the uninterrupted run's, failed checkpoints leave nothing
//! behind, the caller's `--keep` applies, and a state that cannot be continued is refused.
//! Small cnn4 runs on Fashion-MNIST (Debian's dataset-fashion-mnist, installed by `make setup`).
use alexnet_rs::checkpoint;
use alexnet_rs::metrics::{EpochRecord, Metrics, ResumeAt, StepRecord};
use alexnet_rs::train::{train, Event, TrainConfig};
use std::cell::Cell;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{require_data, serial, tmp};

/// cnn4 at 28x28: 4 steps per epoch, 2 epochs, a checkpoint every 2 steps (so every epoch end
/// replaces the checkpoint of its own step).
fn tiny(out: &Path) -> TrainConfig {
    TrainConfig {
        preset: alexnet_rs::Preset::Cnn4,
        input_size: 28,
        batch_size: 32,
        epochs: 2,
        lr: 0.01,
        seed: 7,
        out: out.to_path_buf(),
        limit_train: Some(128),
        limit_test: Some(64),
        threads: 2,
        checkpoint_every: 2,
        keep: 1,
        ..TrainConfig::default()
    }
}

fn run(tc: &TrainConfig, resume: Option<&Path>) {
    train(tc, resume, &mut |_| {}, &|| false).unwrap();
}

/// A fresh `tiny` run in scratch folder `name`, stopped after 2 steps (with a checkpoint).
fn two_steps(name: &str) -> common::Scratch {
    let b = tmp(name);
    run(
        &TrainConfig {
            max_steps: Some(2),
            ..tiny(&b)
        },
        None,
    );
    b
}

/// `alexnet train ARGS --resume RESUME` in folder `cwd` (no other flags), without `ALEXNET_FAULT`.
fn resume_in(cwd: &Path, resume: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .current_dir(cwd)
        .arg("train")
        .args(args)
        .arg("--resume")
        .arg(resume)
        .env_remove("ALEXNET_FAULT")
        .output()
        .unwrap()
}

/// The same run through the CLI, with `ALEXNET_FAULT` set (or not).
fn cli(out: &Path, resume: bool, extra: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alexnet"));
    c.args(["train", "--threads", "2"]);
    if resume {
        c.arg("--resume").arg(out);
    } else {
        c.args([
            "--preset",
            "cnn4",
            "--input-size",
            "28",
            "--batch-size",
            "32",
            "--epochs",
            "2",
        ]);
        c.args([
            "--seed",
            "7",
            "--limit-train",
            "128",
            "--limit-test",
            "64",
            "--checkpoint-every",
            "2",
        ]);
        c.args(["--keep", "1", "--out"]).arg(out);
    }
    c.args(extra);
    match fault {
        Some(f) => c.env("ALEXNET_FAULT", f),
        None => c.env_remove("ALEXNET_FAULT"),
    };
    c.output().unwrap()
}

/// metrics.jsonl and epochs.csv with their timing fields (images_per_s, seconds) masked: every
/// other byte must match.
fn masked(run: &Path) -> (String, String) {
    let jsonl = fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    let jsonl = jsonl
        .lines()
        .map(|l| match l.find("\"images_per_s\":") {
            Some(i) => format!("{}\"images_per_s\":*}}", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let csv = fs::read_to_string(run.join("epochs.csv")).unwrap_or_default();
    let csv = csv
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l.to_string(), |(a, _)| format!("{a},*")))
        .collect::<Vec<_>>()
        .join("\n");
    (jsonl, csv)
}

fn reference() -> common::Scratch {
    let a = tmp("resume-reference");
    run(&tiny(&a), None);
    a
}

#[test]
fn a_resumed_run_writes_the_uninterrupted_runs_metrics_and_epoch_rows() {
    let _s = serial();
    require_data();
    // Findings 3 and 4: re-printed floats moved by one ULP, and the interrupted epoch's
    // train_loss averaged only the steps after the resume.
    let (a, b) = (reference(), tmp("resume-pieces"));
    run(
        &TrainConfig {
            max_steps: Some(3),
            ..tiny(&b)
        },
        None,
    );
    // Resumed into another folder, the run's history comes along (it started empty there).
    let c = tmp("resume-elsewhere");
    run(&tiny(&c), Some(&b));
    run(
        &TrainConfig {
            max_steps: Some(3),
            ..tiny(&b)
        },
        Some(&b),
    );
    run(&tiny(&b), Some(&b));
    let (ma, ca) = masked(&a);
    assert_eq!(ma.lines().count(), 8);
    assert_eq!(ca.lines().count(), 3, "{ca}");
    for run in [&b, &c] {
        let (m, c) = masked(run);
        assert_eq!(c, ca, "epochs.csv differs");
        assert_eq!(m, ma, "metrics.jsonl differs");
    }
}

#[test]
fn resuming_keeps_earlier_metrics_lines_byte_for_byte() {
    let _s = serial();
    // Finding 3 at its own depth: lines written before the checkpoint are kept as they are,
    // never parsed and printed again.
    let dir = tmp("metrics-bytes");
    let m = Metrics::open(&dir, None).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // a value in [1e-4, 10) with all 53 bits of mantissa used
        (1.0 + (x >> 11) as f64 / (1u64 << 53) as f64) * 10f64.powi((x % 5) as i32 - 4)
    };
    for step in 1..=500 {
        let (loss, lr, e) = (next(), next(), next() / 10.0);
        m.step(&StepRecord {
            step,
            epoch: 0,
            loss,
            lr,
            train_error: e,
            images_per_s: next(),
        })
        .unwrap();
    }
    let before = fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    Metrics::open(&dir, Some(ResumeAt { step: 400, epoch: 0 })).unwrap();
    let after = fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let keep: String = before.lines().take(400).map(|l| format!("{l}\n")).collect();
    assert!(after == keep, "lines changed on resume");
}

#[test]
fn a_time_budget_stop_writes_no_mislabelled_epoch_row() {
    let _s = serial();
    require_data();
    // Finding 4: the budget stop wrote a row labelled with the previous epoch and its lr.
    let (a, b) = (reference(), tmp("budget"));
    run(
        &TrainConfig {
            time_budget_s: Some(0.0),
            ..tiny(&b)
        },
        None,
    );
    let csv = fs::read_to_string(b.join("epochs.csv")).unwrap_or_default();
    assert!(
        csv.lines().count() <= 1,
        "a budget stop after one step wrote an epoch row:\n{csv}"
    );
    run(&tiny(&b), Some(&b));
    assert_eq!(masked(&b), masked(&a));
}

#[test]
fn a_step_budget_spent_on_an_epochs_last_step_ends_that_epoch() {
    let _s = serial();
    require_data();
    // It returned before the epoch's end: no epochs.csv row, no best, a checkpoint inside the
    // epoch (and the resume that closed it said "the run is complete").
    let (a, b) = (reference(), tmp("budget-at-epoch-end"));
    run(
        &TrainConfig {
            max_steps: Some(4), // epoch 1's 4 steps
            ..tiny(&b)
        },
        None,
    );
    let csv = fs::read_to_string(b.join("epochs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let state = checkpoint::load(&b).unwrap().state;
    assert_eq!((state.epoch, state.batch_in_epoch, state.best_step), (1, 0, Some(4)));
    run(&tiny(&b), Some(&b));
    assert_eq!(masked(&b), masked(&a));
}

#[test]
fn a_budget_spent_after_an_epoch_without_evaluation_returns_the_final_weights_evaluation() {
    let _s = serial();
    require_data();
    // With --eval-every 2, a step budget spent on epoch 3's last step returned epoch 2's
    // evaluation (of the weights 4 steps earlier) as the run's result.
    let (a, b) = (tmp("budget-unevaluated-epoch"), tmp("budget-unevaluated-epoch-ref"));
    let constant = |out: &Path| TrainConfig {
        schedule: alexnet_rs::optim::ScheduleKind::Constant,
        epochs: 4,
        ..tiny(out)
    };
    let stopped = train(
        &TrainConfig {
            eval_every: 2,
            max_steps: Some(12), // 3 epochs of 4 steps
            ..constant(&a)
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    // Every epoch evaluated, the last (3) at the same weights.
    let whole = train(
        &TrainConfig {
            epochs: 3,
            ..constant(&b)
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .unwrap();
    assert_eq!((stopped.loss, stopped.top1), (whole.loss, whole.top1));
}

#[test]
fn an_evaluation_that_fails_keeps_the_epochs_training() {
    let _s = serial();
    // Unreadable evaluation images ended the run before the epoch's checkpoint: the epoch's
    // training was lost, with nothing to resume. Saved at the epoch's last position instead,
    // a resume once the images are back redoes only the evaluation.
    let data = tmp("eval-fails-data");
    let write = |split: &str, bad: bool| {
        for c in 0..2 {
            let d = data.join(split).join(format!("c{c}"));
            fs::create_dir_all(&d).unwrap();
            for i in 0..8 {
                let p = d.join(format!("{i}.png"));
                if bad {
                    fs::write(&p, b"").unwrap();
                } else {
                    image::RgbImage::from_pixel(8, 8, image::Rgb([i * 30, c * 90, 5]))
                        .save(&p)
                        .unwrap();
                }
            }
        }
    };
    write("train", false);
    write("val", true);
    let b = tmp("eval-fails");
    let tc = TrainConfig {
        data: Some(data.to_path_buf()),
        batch_size: 4,
        epochs: 1,
        limit_train: None,
        limit_test: None,
        checkpoint_every: 0,
        ..tiny(&b)
    };
    let e = train(&tc, None, &mut |_| {}, &|| false)
        .expect_err("no evaluation image")
        .to_string();
    assert!(e.contains("no image of the evaluation set could be read"), "{e}");
    let state = checkpoint::load(&b).expect("the epoch's training is saved").state;
    assert_eq!((state.step, state.epoch, state.batch_in_epoch), (4, 0, 4));
    assert!(!b.join("epochs.csv").exists() || fs::read_to_string(b.join("epochs.csv")).unwrap().lines().count() <= 1);
    // Resumed (the images still unreadable: a changed test set is refused as other data), it
    // trains no step again and fails at the same evaluation, the checkpoint unchanged.
    let e = train(&tc, Some(&b), &mut |_| {}, &|| false)
        .expect_err("still no evaluation image")
        .to_string();
    assert!(e.contains("no image of the evaluation set could be read"), "{e}");
    let state = checkpoint::load(&b).unwrap().state;
    assert_eq!((state.step, state.epoch, state.batch_in_epoch), (4, 0, 4));
    let steps = Metrics::existing(&b).steps().unwrap();
    assert_eq!(steps.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

/// A `tiny` run into `b` stopped (`stop()` true) at the first batch of epoch `epoch`'s
/// evaluation (epochs from 1): checks what it saved and returns the evaluations' progress events.
fn stopped_in_the_evaluation_of_epoch(b: &Path, epoch: u64) -> Vec<(u64, u64)> {
    let last_step = 4 * epoch; // tiny: 128 images in batches of 32
    let (steps, asked, stopped) = (Cell::new(0), Cell::new(0), Cell::new(false));
    let mut evaluating = Vec::new();
    let mut on_event = |e: &Event| match e {
        Event::Step(r) => steps.set(r.step),
        Event::Stopped => stopped.set(true),
        Event::Evaluating { done, total } => evaluating.push((*done, *total)),
        _ => {}
    };
    // Asked once after the epoch's last step (no), then before each evaluation batch (yes).
    let stop = || {
        if steps.get() == last_step {
            asked.set(asked.get() + 1);
        }
        asked.get() >= 2
    };
    let eval = train(&tiny(b), None, &mut on_event, &stop).expect("stopped, then evaluated");
    assert!(stopped.get());
    assert_eq!(asked.get(), 2, "the evaluation went on past the stop");
    assert_eq!(eval.samples, 64);
    let state = checkpoint::load(b).unwrap().state;
    assert_eq!(
        (state.step, state.epoch, state.batch_in_epoch),
        (last_step, epoch - 1, 4)
    );
    let rows = fs::read_to_string(b.join("epochs.csv")).unwrap_or_default();
    assert_eq!(rows.lines().count().saturating_sub(1) as u64, epoch - 1, "{rows}");
    evaluating
}

#[test]
fn a_stop_during_an_epochs_evaluation_saves_the_epoch_at_once() {
    let _s = serial();
    require_data();
    // A stop (Ctrl-C, SIGTERM) during an epoch's evaluation was seen only after the whole
    // evaluation, its checkpoint and one more step: minutes on a real test set, past a preempted
    // machine's grace period. It ends the evaluation at its next batch and saves the epoch's last
    // position; the resume redoes the evaluation and writes the uninterrupted run's rows.
    let (a, b) = (reference(), tmp("stop-in-eval"));
    let evaluating = stopped_in_the_evaluation_of_epoch(&b, 1);
    // The stopped evaluation's first batch (of 2: 64 images in batches of 32), then the final
    // evaluation's two.
    assert_eq!(evaluating, [(0, 2), (0, 2), (1, 2)]);
    run(&tiny(&b), Some(&b));
    assert_eq!(masked(&b), masked(&a));
}

#[test]
fn a_resume_that_redoes_the_last_epochs_evaluation_does_not_call_the_run_complete() {
    let _s = serial();
    require_data();
    // Stopped in the last epoch's evaluation, the resume trains no step: it said "the run is
    // complete ...; pass a larger --epochs", though it wrote the last row and checkpoint.
    let (a, b) = (reference(), tmp("stop-in-last-eval"));
    let evaluating = stopped_in_the_evaluation_of_epoch(&b, 2);
    assert_eq!(evaluating, [(0, 2), (1, 2), (0, 2), (0, 2), (1, 2)]);
    let out = cli(&b, true, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("the run is complete"), "{err}");
    assert_eq!(masked(&b), masked(&a));
    // Once it is complete, a resume says so.
    let out = cli(&b, true, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("the run is complete (2 epochs done, --epochs 2)"),
        "{err}"
    );
}

#[test]
fn a_kill_during_resume_keeps_the_metrics_history() {
    let _s = serial();
    require_data();
    // Finding 2: resume rewrote metrics.jsonl line by line; a kill in between erased it.
    let b = tmp("kill-resume");
    run(
        &TrainConfig {
            max_steps: Some(3),
            ..tiny(&b)
        },
        None,
    );
    let before = fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(before.lines().count(), 3);
    let out = cli(&b, true, &[], Some("metrics-mid-line:abort@1"));
    assert!(!out.status.success());
    let after = fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert!(after.starts_with(&before), "history lost:\n{after}");
    // And the run still resumes to the uninterrupted run's files.
    assert!(cli(&b, true, &[], None).status.success());
    let a = reference();
    assert_eq!(masked(&b), masked(&a));
}

#[test]
fn an_unreadable_metrics_line_is_dropped_alone() {
    let _s = serial();
    // One damaged line in the middle of metrics.jsonl made a resume cut it and every valid line
    // after it (steps 3-8 gone, silently).
    let dir = tmp("metrics-bad-line");
    let m = Metrics::open(&dir, None).unwrap();
    for step in 1..=8 {
        m.step(&StepRecord {
            step,
            loss: step as f64,
            ..StepRecord::default()
        })
        .unwrap();
    }
    let path = dir.join("metrics.jsonl");
    let good = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    lines[2] = "{\"step\":3,\"epo garbage".into();
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    Metrics::open(&dir, Some(ResumeAt { step: 6, epoch: 0 })).unwrap();
    let after = fs::read_to_string(&path).unwrap();
    let want: String = good
        .lines()
        .enumerate()
        .filter(|&(i, _)| i != 2 && i < 6)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert_eq!(after, want);
    assert!(!dir.join("metrics.jsonl.partial").exists());
}

#[test]
fn an_epochs_csv_with_crlf_line_ends_or_another_header_keeps_its_rows() {
    let _s = serial();
    // A first line other than our exact header (CRLF line ends from a Windows editor, or a
    // header of another version) made a resume truncate epochs.csv to nothing, in silence.
    let dir = tmp("epochs-header");
    let m = Metrics::open(&dir, None).unwrap();
    for epoch in 1..=3 {
        m.epoch(&EpochRecord {
            epoch,
            step: epoch * 4,
            ..EpochRecord::default()
        })
        .unwrap();
    }
    let path = dir.join("epochs.csv");
    let good = fs::read_to_string(&path).unwrap();
    let two: String = good.lines().take(3).map(|l| format!("{l}\n")).collect(); // header + epochs 1, 2
    let at = ResumeAt { step: 8, epoch: 2 };
    fs::write(&path, good.replace('\n', "\r\n")).unwrap();
    Metrics::open(&dir, Some(at)).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap().replace('\r', ""), two);
    let other = good.replacen("epoch,step", "epoch,global_step", 1);
    fs::write(&path, other).unwrap();
    Metrics::open(&dir, Some(at)).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), two);
}

#[test]
fn a_partial_metrics_line_does_not_block_resume() {
    let _s = serial();
    require_data();
    // Finding 5: a write that failed mid-line (disk full) made every later --resume fail.
    let b = two_steps("partial-line");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(b.join("metrics.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"step\":3,\"epoch\":0,\"lo").unwrap();
    drop(f);
    run(&tiny(&b), Some(&b));
    let a = reference();
    assert_eq!(masked(&b), masked(&a));
}

#[test]
fn a_checkpoint_failing_on_a_full_disk_leaves_no_temporary_folder() {
    let _s = serial();
    require_data();
    // Finding 5: the partial `.tmp` folder stayed, keeping the disk full.
    let b = tmp("enospc");
    let out = cli(&b, false, &[], Some("ckpt-tmp-partial:enospc@2"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("No space left on device"),
        "{err}"
    );
    let left: Vec<String> = fs::read_dir(b.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(cli(&b, true, &[], None).status.success());
}

#[test]
fn resume_honours_a_new_keep() {
    let _s = serial();
    require_data();
    // Finding 5: `--resume --keep 1` kept the run's own --keep.
    let b = tmp("keep");
    run(
        &TrainConfig {
            max_steps: Some(3),
            checkpoint_every: 1,
            keep: 3,
            ..tiny(&b)
        },
        None,
    );
    let count = || {
        fs::read_dir(b.join("checkpoints"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ckpt-"))
            .count()
    };
    assert_eq!(count(), 3);
    // On a full disk the new --keep freed nothing: the prune came after the failing write.
    let out = cli(&b, true, &["--keep", "2"], Some("ckpt-tmp-partial:enospc@1"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("No space left"));
    assert_eq!(count(), 2);
    run(
        &TrainConfig {
            max_steps: Some(1),
            keep: 1,
            ..TrainConfig::default()
        },
        Some(&b),
    );
    assert_eq!(count(), 1);
}

#[test]
fn a_run_folder_in_or_named_checkpoints_resumes() {
    let _s = serial();
    require_data();
    // `--out /data/checkpoints/run1` was taken for a checkpoint of /data on resume ("no
    // checkpoint here"), and `--auto-resume` failed on every restart; `--out nest/checkpoints`
    // likewise for nest.
    let b = tmp("named-checkpoints");
    for run_dir in [b.join("checkpoints").join("run1"), b.join("nest").join("checkpoints")] {
        run(
            &TrainConfig {
                max_steps: Some(2),
                ..tiny(&run_dir)
            },
            None,
        );
        let out = resume_in(&b, &run_dir, &["--max-steps", "4"]); // steps 3-6
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", run_dir.display());
        let latest = checkpoint::find_latest(&run_dir).unwrap();
        assert!(latest.ends_with("checkpoints/ckpt-000000006"), "{}", latest.display());
        assert!(!b.join(".lock").exists() && !b.join("nest").join(".lock").exists());
    }
}

#[test]
fn resume_takes_a_given_epochs_equal_to_the_default() {
    let _s = serial();
    require_data();
    // `--resume RUN --epochs 90` was ignored: 90 is the default, so it looked like no flag, and a
    // 1-epoch run stayed "complete (1 of 1 epochs); pass a larger --epochs".
    let b = tmp("given-epochs");
    run(&TrainConfig { epochs: 1, ..tiny(&b) }, None);
    let lines = || fs::read_to_string(b.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines(), 4);
    let out = cli(&b, true, &["--epochs", "90", "--max-steps", "1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("the run is complete"), "{err}");
    assert_eq!(lines(), 5, "one more step");
    // And a given setting that a resumed run cannot take is named, even when it is the default.
    let out = cli(&b, true, &["--seed", "0", "--max-steps", "1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("keeps its seed = 7 (ignoring 0)"),
        "{err}"
    );
}

#[test]
fn a_state_past_the_epochs_end_is_refused() {
    let _s = serial();
    require_data();
    // Finding 9: batch_in_epoch beyond the epoch silently skipped the rest of the epoch.
    let b = two_steps("past-end");
    let sp = checkpoint::find_latest(&b).unwrap().join("state.json");
    let text = fs::read_to_string(&sp)
        .unwrap()
        .replace("\"batch_in_epoch\": 2", "\"batch_in_epoch\": 50");
    fs::write(&sp, text).unwrap();
    let e = train(&tiny(&b), Some(&b), &mut |_| {}, &|| false)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("batch_in_epoch") && e.contains("50"), "{e}");
}

#[test]
fn eval_of_nan_weights_fails_with_a_clear_message() {
    let _s = serial();
    require_data();
    // Finding 9: `alexnet eval` printed loss NaN and exited 0.
    let b = tmp("nan-eval");
    run(
        &TrainConfig {
            max_steps: Some(1),
            ..tiny(&b)
        },
        None,
    );
    let dir = checkpoint::find_latest(&b).unwrap();
    let mut w: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(dir.join("weights.safetensors")).unwrap();
    let _ = w[0].1.fill_(f64::NAN);
    tch::Tensor::write_safetensors(&w, dir.join("weights.safetensors")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["eval", "--limit", "16"])
        .arg(&b)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("NaN"), "{err}");
    // Finite weights whose outputs overflow: predict printed NaN probabilities and exited 0.
    for (_, t) in w.iter_mut() {
        let _ = t.fill_(1e30); // conv2's sums overflow float32
    }
    tch::Tensor::write_safetensors(&w, dir.join("weights.safetensors")).unwrap();
    let img = b.join("img.png");
    image::RgbImage::from_pixel(28, 28, image::Rgb([90, 90, 90]))
        .save(&img)
        .unwrap();
    for args in [
        vec!["eval".as_ref(), b.as_os_str()],
        vec!["predict".as_ref(), b.as_os_str(), img.as_os_str()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_alexnet"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("NaN or infinite outputs"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn weights_that_give_nan_outputs_are_never_checkpointed() {
    let _s = serial();
    require_data();
    // --lr 1e30 --max-steps 1: the first loss is finite, the update makes the outputs NaN; the
    // checkpoint was written, the run printed "loss NaN" and exited 0.
    let b = tmp("nan-stop");
    let e = train(
        &TrainConfig {
            lr: 1e30,
            max_steps: Some(1),
            ..tiny(&b)
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .expect_err("diverged");
    let msg = e.to_string();
    assert!(matches!(e, alexnet_rs::Error::Diverged { .. }), "{e:?}");
    assert!(
        msg.contains("the validation loss became") && msg.contains("no checkpoint was written"),
        "{msg}"
    );
    assert!(
        checkpoint::find_latest(&b).is_err(),
        "no checkpoint of NaN-producing weights"
    );
    // At an epoch's end (4 steps per epoch, checkpoints every 2): the last good one stays newest.
    let c = tmp("nan-epoch");
    let e = train(&TrainConfig { lr: 3e4, ..tiny(&c) }, None, &mut |_| {}, &|| false)
        .expect_err("diverged")
        .to_string();
    let newest = checkpoint::find_latest(&c);
    if let Ok(n) = &newest {
        assert!(
            e.contains(&format!("the last good checkpoint is {}", n.display())),
            "{e}"
        );
        let w: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(n.join("weights.safetensors")).unwrap();
        assert!(w.iter().all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1), "{e}");
    } else {
        assert!(e.contains("no checkpoint was written"), "{e}");
    }
}

#[test]
fn resume_reads_the_data_from_where_it_is_now() {
    let _s = serial();
    let fashion = require_data();
    // A run whose data moved (another machine, another mount) could not be resumed: the given
    // --data was ignored ("a resumed run keeps its data") and the recorded path was gone.
    let (before, after) = (tmp("data-before"), tmp("data-after"));
    fs::create_dir_all(&*before).unwrap();
    for f in fs::read_dir(&fashion).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            fs::copy(&f, before.join(f.file_name().unwrap())).unwrap();
        }
    }
    let b = tmp("moved-data");
    let tc = TrainConfig {
        data: Some(before.to_path_buf()),
        max_steps: Some(3),
        ..tiny(&b)
    };
    run(&tc, None);
    fs::rename(&*before, &*after).unwrap();
    let out = cli(&b, true, &["--data", after.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("keeps its data"), "{err}");
    assert_eq!(masked(&b), masked(&reference()), "the same run as if nothing had moved");
    let last = checkpoint::load(&b).unwrap();
    assert_eq!(last.state.config.data.as_deref(), Some(&*after));
    // Data with other classes is not the run's: refused before training, by name.
    let other = tmp("other-classes");
    for class in ["x", "y"] {
        fs::create_dir_all(other.join(class)).unwrap();
        image::RgbImage::from_pixel(28, 28, image::Rgb([1, 2, 3]))
            .save(other.join(class).join("a.png"))
            .unwrap();
    }
    let out = cli(&b, true, &["--data", other.to_str().unwrap(), "--epochs", "3"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the run was trained on the classes") && err.contains("\"x\", \"y\""),
        "{err}"
    );
    // Other images under the same class names, as many batches per epoch (the test images as
    // the training set): it trained on them silently, no longer the run it continued.
    let swapped = tmp("swapped-data");
    fs::create_dir_all(&*swapped).unwrap();
    for (from, to) in [("t10k", "train"), ("train", "t10k")] {
        for kind in ["images-idx3", "labels-idx1"] {
            let name = |split: &str| format!("{split}-{kind}-ubyte.gz");
            fs::copy(after.join(name(from)), swapped.join(name(to))).unwrap();
        }
    }
    let before_swap = checkpoint::load(&b).unwrap().state.step;
    let out = cli(&b, true, &["--data", swapped.to_str().unwrap(), "--epochs", "3"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("training set") && err.contains("--init-from"),
        "{err}"
    );
    assert_eq!(checkpoint::load(&b).unwrap().state.step, before_swap, "nothing trained");
    // Refused before the run's folder is written: a new --out stays unmade (it got classes.json
    // and the metrics history, which the next attempt then moved to earlier-1/).
    let elsewhere = tmp("swapped-out");
    let args = [
        "--data",
        swapped.to_str().unwrap(),
        "--out",
        elsewhere.to_str().unwrap(),
    ];
    assert!(!cli(&b, true, &args, None).status.success());
    assert!(!elsewhere.exists());
}

#[test]
fn a_fresh_run_into_a_run_folder_is_refused_and_loses_nothing() {
    let _s = serial();
    require_data();
    // Running the same command twice deleted the first run's metrics.jsonl and epochs.csv, mixed
    // the two runs' checkpoints, and left the first run's later steps as the "newest checkpoint"
    // that eval and predict read.
    let b = tmp("fresh-twice");
    let tc = TrainConfig {
        max_steps: Some(6),
        ..tiny(&b)
    };
    run(&tc, None);
    let before = (
        fs::read(b.join("metrics.jsonl")).unwrap(),
        fs::read(b.join("epochs.csv")).unwrap(),
        checkpoint::find_latest(&b).unwrap(),
    );
    let e = train(
        &TrainConfig {
            max_steps: Some(1),
            ..tc.clone()
        },
        None,
        &mut |_| {},
        &|| false,
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains("already holds a run") && e.contains("--resume"), "{e}");
    let after = (
        fs::read(b.join("metrics.jsonl")).unwrap(),
        fs::read(b.join("epochs.csv")).unwrap(),
        checkpoint::find_latest(&b).unwrap(),
    );
    assert!(before == after, "nothing was touched");
    // Resuming it is what the message says, and works; so does a fresh run elsewhere.
    run(&TrainConfig::default(), Some(&b));
    run(
        &TrainConfig {
            max_steps: Some(1),
            ..tiny(&tmp("fresh-elsewhere"))
        },
        None,
    );
    // Checkpoints shared without their optimizer state (RELIABILITY.md) did not count as a run:
    // a fresh run there pruned them, replaced the metrics, and left an old checkpoint as the
    // newest that eval and predict read.
    let ckpts: Vec<_> = fs::read_dir(b.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ckpt-"))
        .collect();
    assert!(!ckpts.is_empty());
    for c in &ckpts {
        fs::remove_file(c.join("optimizer.safetensors")).unwrap();
    }
    let before = (
        fs::read(b.join("metrics.jsonl")).unwrap(),
        checkpoint::find_latest_weights(&b).unwrap(),
    );
    let e = train(&tc, None, &mut |_| {}, &|| false)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("already holds a run") && e.contains("--init-from"), "{e}");
    let after = (
        fs::read(b.join("metrics.jsonl")).unwrap(),
        checkpoint::find_latest_weights(&b).unwrap(),
    );
    assert!(before == after, "nothing was touched");
    assert!(ckpts.iter().all(|c| c.join("weights.safetensors").is_file()));
}

#[test]
fn resuming_from_an_older_checkpoint_is_refused_and_loses_nothing() {
    let _s = serial();
    require_data();
    // `--resume run/checkpoints/ckpt-000000002` of a run at step 8 cut metrics.jsonl back to step
    // 2, dropped the epoch row, and pruned the newer checkpoints.
    let b = tmp("resume-older");
    let tc = TrainConfig { keep: 3, ..tiny(&b) };
    run(&tc, None);
    let before = (
        fs::read(b.join("metrics.jsonl")).unwrap(),
        fs::read(b.join("epochs.csv")).unwrap(),
        checkpoint::find_latest(&b).unwrap(),
    );
    let older = b.join("checkpoints").join("ckpt-000000004");
    assert!(older.join("state.json").is_file());
    let e = train(
        &TrainConfig {
            max_steps: Some(1),
            ..TrainConfig::default()
        },
        Some(&older),
        &mut |_| {},
        &|| false,
    )
    .expect_err("refused")
    .to_string();
    assert!(
        e.contains("not the newest checkpoint") && e.contains("ckpt-000000008"),
        "{e}"
    );
    let after = (
        fs::read(b.join("metrics.jsonl")).unwrap(),
        fs::read(b.join("epochs.csv")).unwrap(),
        checkpoint::find_latest(&b).unwrap(),
    );
    assert!(before == after, "nothing was touched");
    assert!(older.join("state.json").is_file(), "the older checkpoint is kept");
    // The newest checkpoint named by its folder resumes as the run folder does, and the run
    // goes on in the run folder (the last line named the checkpoint folder).
    let out = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["train", "--epochs", "3", "--max-steps", "1", "--resume"])
        .arg(&before.2)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.trim_end().ends_with(&format!("checkpoints in {}", b.display())),
        "{stdout}"
    );
    assert_eq!(checkpoint::load(&b).unwrap().state.step, 9);
}

/// `alexnet train` of a small, long run (cnn4, 1000 epochs) into `b`, with `extra` flags and its
/// output piped, once it has written its first step's metrics.
fn training_past_its_first_step(b: &Path, extra: &[&str]) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["train", "--preset", "cnn4", "--input-size", "28", "--batch-size", "32"])
        .args(["--epochs", "1000", "--limit-train", "128", "--threads", "2"])
        .args(extra)
        .arg("--out")
        .arg(b)
        .env_remove("ALEXNET_FAULT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while fs::read_to_string(b.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 1 {
        assert!(started.elapsed().as_secs() < 120, "no step within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
fn ctrl_c_or_sigterm_stops_with_a_checkpoint_and_exit_code_128_plus_the_signal() {
    let _s = serial();
    require_data();
    // Ctrl-C exited 0 and printed the "final:" line of a finished run (`alexnet train ... &&
    // deploy` carried on after an interrupted run); SIGTERM (a preempted machine) killed it at once.
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let b = tmp(&format!("signal-{signal}"));
        let child = training_past_its_first_step(&b, &["--limit-test", "64"]);
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains("interrupted") && err.contains("--resume"), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("final:"));
        let c = checkpoint::load(&b).unwrap();
        assert!(c.state.step >= 1 && c.state.epoch < 1000);
        let again = cli(&b, true, &["--max-steps", "1"], None);
        assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    }
}

#[test]
fn a_second_signal_quits_at_once_without_promising_a_checkpoint() {
    use std::io::{BufRead, Read};
    use std::os::unix::process::ExitStatusExt;
    let _s = serial();
    require_data();
    // The second Ctrl-C quit at once, but first printed "stopping after this step with a
    // checkpoint" again: a checkpoint that never came.
    let b = tmp("signal-twice");
    let mut child = training_past_its_first_step(&b, &["--ten-crop-eval"]);
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    // The first handler has run once its line is out; the evaluation of 10000 test images x 10
    // crops that follows the stop leaves time for the second signal, sent past the 2 s within
    // which a repeat counts as the same request (test_faults.py's term2 checks that one).
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("stopping after this step") {
        assert!(err.read_line(&mut seen).unwrap() > 0, "{seen}");
    }
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    err.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{seen}");
    assert_eq!(seen.matches("stopping after this step").count(), 1, "{seen}");
}

#[test]
fn an_epoch_row_carries_the_lr_its_last_step_trained_with() {
    let _s = serial();
    require_data();
    // The row showed the lr after the schedule's step: 0 for the last epoch of a cosine run, the
    // dropped lr for an epoch a plateau schedule trained wholly at the higher one.
    let b = tmp("epoch-lr");
    run(
        &TrainConfig {
            schedule: alexnet_rs::optim::ScheduleKind::Cosine,
            ..tiny(&b)
        },
        None,
    );
    let steps: Vec<serde_json::Value> = fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let csv = fs::read_to_string(b.join("epochs.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let (step, lr): (u64, f64) = (row[1].parse().unwrap(), row[6].parse().unwrap());
        let last = steps
            .iter()
            .find(|s| s["step"] == step)
            .expect("the row's step is recorded");
        assert!(lr > 0.0, "{row:?}");
        // epochs.csv prints 7 significant digits
        let want = last["lr"].as_f64().unwrap();
        assert!((lr - want).abs() <= 1e-6 * want, "{row:?} vs {want}");
    }
}

#[test]
fn a_run_folder_is_written_by_one_process_at_a_time() {
    let _s = serial();
    require_data();
    // Two `alexnet train --out X` at once mixed their metrics lines and checkpoints, and a
    // resume recovered (renamed, deleted) the checkpoint files the other process was writing.
    let b = two_steps("locked");
    let held = alexnet_rs::files::RunLock::acquire(&b).unwrap();
    let before = fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let c = tmp("locked-new");
    let _also = alexnet_rs::files::RunLock::acquire(&c).unwrap();
    // A fresh run into the busy run folder said "already holds a run ... continue it with
    // --resume", which then met the lock.
    for (out, resume) in [(&b, true), (&b, false), (&c, false)] {
        let r = cli(out, resume, &[], None);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert!(err.contains("is being written by another training process"), "{err}");
    }
    assert_eq!(fs::read_to_string(b.join("metrics.jsonl")).unwrap(), before);
    assert!(!c.join("metrics.jsonl").exists());
    // The holder gone (as when its process ends, however it ends), the run continues.
    drop(held);
    let r = cli(&b, true, &["--max-steps", "1"], None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(checkpoint::load(&b).unwrap().state.step, 3);
}

#[test]
fn a_checkpoint_outside_a_run_folder_resumes_only_into_a_given_out() {
    let _s = serial();
    require_data();
    // It continued into the `out` recorded in its state.json (here the original run's folder;
    // a relative one: the current folder's), while reporting the checkpoint's folder.
    let b = two_steps("loose-origin");
    let ckpt = checkpoint::find_latest(&b).unwrap();
    let loose = tmp("loose");
    fs::create_dir_all(&*loose).unwrap();
    let moved = loose.join(ckpt.file_name().unwrap());
    fs::rename(&ckpt, &moved).unwrap();
    let listing = |d: &Path| {
        let mut names: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = listing(&b.join("checkpoints"));
    let out = cli(&moved, true, &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("outside a run folder") && err.contains("--out"),
        "{err}"
    );
    assert_eq!(listing(&b.join("checkpoints")), before, "the original run untouched");
    assert_eq!(
        listing(&loose),
        vec![moved.file_name().unwrap().to_owned()],
        "no lock, nothing recovered"
    );
    let c = tmp("loose-continued");
    let out = cli(&moved, true, &["--out", c.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(checkpoint::find_latest(&c).is_ok());
}

#[test]
fn a_resume_runs_on_the_devices_and_threads_given_now() {
    let _s = serial();
    require_data();
    // A run trained on a GPU could not be resumed on a machine without it: --devices was
    // "kept as the run's (ignoring ...)", then "cuda:0 does not exist here".
    let b = two_steps("resume-devices");
    let args = ["--devices", "cpu,cpu", "--threads", "1", "--max-steps", "1"];
    let out = resume_in(Path::new("."), &b, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("a resumed run keeps its"),
        "{err}"
    );
    let last = checkpoint::load(&b).unwrap().state;
    assert_eq!(
        (last.step, last.config.devices.as_str(), last.config.threads),
        (3, "cpu,cpu", 1)
    );
}

#[test]
fn a_checkpoint_given_relative_to_its_run_folder_resumes_there() {
    let _s = serial();
    require_data();
    // `--resume checkpoints/ckpt-<step>` from inside the run folder: its run folder was the
    // empty path ("out is an empty path").
    let b = two_steps("relative-ckpt");
    let ckpt = checkpoint::find_latest(&b).unwrap();
    let out = resume_in(
        &b,
        ckpt.strip_prefix(&*b).unwrap(),
        &["--threads", "2", "--max-steps", "1"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(checkpoint::load(&b).unwrap().state.step, 3);
    // `--resume checkpoints` (its run folder the empty path) was refused as held by another
    // training process: this one, locking `./.lock` twice.
    // With --auto-resume it resumed the empty path ("resume is an empty path").
    for (given, auto, step) in [("checkpoints", "", 4), ("checkpoints/", "--auto-resume", 5)] {
        let args = ["--threads", "2", "--max-steps", "1", auto];
        let out = resume_in(&b, Path::new(given), &args[..if auto.is_empty() { 4 } else { 5 }]);
        assert!(
            out.status.success(),
            "{given}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(checkpoint::load(&b).unwrap().state.step, step);
    }
}
