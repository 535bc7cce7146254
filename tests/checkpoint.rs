//! The checkpoint folder under every state a crash or a full disk can leave: half-replaced
//! steps, stray temporary folders, NaN weights, broken safetensors files. No training here: the
//! checkpoints are written by `checkpoint::save` from freshly initialised weights.
use alexnet_rs::checkpoint::{self, TrainState};
use alexnet_rs::{model, Config, Preset};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use tch::Tensor;

mod common;
use common::{serial, tmp};

/// A cnn4 run (32x32) with 10 classes, saved at `steps` (in order).
fn run_with(name: &str, steps: &[u64]) -> (common::Scratch, TrainState, BTreeMap<String, Tensor>) {
    let run = tmp(name);
    let cfg = Config::preset(Preset::Cnn4, 10).unwrap();
    tch::manual_seed(1);
    let w = model::init_whole(&cfg).unwrap();
    checkpoint::save_weights(&run, Preset::Cnn4, 32, &w, None).unwrap();
    let mut state = checkpoint::load(&run).unwrap().state;
    let v: BTreeMap<String, Tensor> = w.iter().map(|(k, t)| (k.clone(), t.zeros_like())).collect();
    for &s in steps {
        state.step = s;
        checkpoint::save(&run, &state, &w, &v, 10).unwrap();
    }
    (run, state, w)
}

fn ckpt(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("ckpt-{step:09}"))
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_half_replaced_checkpoint_is_skipped_for_the_newest_complete_one() {
    let _s = serial();
    // Finding 1: a kill while ckpt-4 was being replaced by a new ckpt-4 left it with only its
    // two safetensors files (state.json already deleted) beside the complete new `.tmp` folder.
    let (run, _, _) = run_with("half-replaced", &[2, 4]);
    let root = run.join("checkpoints");
    copy_dir(&ckpt(&run, 4), &root.join(".ckpt-000000004.tmp"));
    fs::remove_file(ckpt(&run, 4).join("state.json")).unwrap();
    let c = checkpoint::load(&run).expect("the complete copy of step 4 loads");
    assert_eq!(c.state.step, 4);
    // Without the temporary copy: the newest complete visible one, step 2.
    fs::remove_dir_all(root.join(".ckpt-000000004.tmp")).unwrap();
    assert_eq!(checkpoint::load(&run).unwrap().state.step, 2);
    assert_eq!(checkpoint::find_latest(&run).unwrap(), ckpt(&run, 2));
}

#[test]
fn a_half_written_state_json_never_counts_as_complete() {
    let _s = serial();
    let (run, _, _) = run_with("half-state", &[2, 4]);
    // An older layout could hold a truncated state.json only through a copy gone wrong; the
    // loader refuses it by name rather than panicking.
    let sp = ckpt(&run, 4).join("state.json");
    let text = fs::read_to_string(&sp).unwrap();
    fs::write(&sp, &text[..text.len() / 2]).unwrap();
    let e = checkpoint::load(&run).err().expect("refused").to_string();
    assert!(e.contains("state.json"), "{e}");
}

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let _s = serial();
    // Finding 9: a checkpoint whose weights are NaN evaluated "fine" with loss NaN.
    let (run, _, mut w) = run_with("nan", &[]);
    let name = "conv2.weight";
    let _ = w.get_mut(name).unwrap().get(0).fill_(f64::NAN);
    let list: Vec<(&str, &Tensor)> = w.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let dir = checkpoint::find_latest(&run).unwrap();
    Tensor::write_safetensors(&list, dir.join("weights.safetensors")).unwrap();
    let e = checkpoint::load(&run).err().expect("NaN weights refused").to_string();
    assert!(e.contains(name) && e.contains("NaN"), "{e}");
}

#[test]
fn safetensors_errors_say_what_is_wrong() {
    let _s = serial();
    // Finding 9: "safetensors error <path>" and an enum name said nothing a user can act on.
    let (run, _, _) = run_with("st-cause", &[]);
    let wp = checkpoint::find_latest(&run).unwrap().join("weights.safetensors");
    let good = fs::read(&wp).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "shorter than its header says",
        ),
        ("empty", Vec::new(), "too short"),
        ("text", b"hello, I am not a tensor file at all".to_vec(), "header"),
        (
            "bad header",
            [&16u64.to_le_bytes()[..], b"{not json at all}"].concat(),
            "not valid JSON",
        ),
    ];
    for (what, bytes, needle) in cases {
        fs::write(&wp, bytes).unwrap();
        let e = checkpoint::load(&run).err().expect(what).to_string();
        assert!(e.contains("weights.safetensors") && e.contains(needle), "{what}: {e}");
        assert!(
            !e.contains("MetadataIncompleteBuffer") && !e.contains("HeaderTooSmall"),
            "{e}"
        );
    }
}

#[test]
fn weights_saved_for_another_input_size_are_checked_against_that_size() {
    let _s = serial();
    // Finding 7 in the core: save_weights checked the weights of a 28x28 network against the
    // preset's default input size, so a valid checkpoint could not be written (nor read back).
    let run = tmp("input-size");
    let mut cfg = Config::preset(Preset::Cnn4, 10).unwrap();
    cfg.input_size = 28;
    let w = model::init_whole(&cfg).unwrap();
    checkpoint::save_weights(&run, Preset::Cnn4, 28, &w, None).expect("28x28 weights for a 28x28 run");
    let c = checkpoint::load(&run).unwrap();
    assert_eq!(c.state.config.input_size, 28);
    let e = checkpoint::save_weights(&tmp("input-size-2"), Preset::Cnn4, 32, &w, None)
        .expect_err("28x28 weights are not a 32x32 network")
        .to_string();
    assert!(e.contains("fc4.weight"), "{e}");
}

#[test]
fn channels_last_weights_are_saved_and_load_with_the_same_values() {
    let _s = serial();
    // `alexnet train --channels-last` keeps conv weights (and their momentum) in NHWC storage;
    // its first checkpoint failed with "Cannot save non contiguous tensors" (found by
    // scripts/gpu-check's CLI part).
    let (run, state, w) = run_with("channels-last", &[]);
    let cl: BTreeMap<String, Tensor> = w
        .iter()
        .map(|(k, t)| {
            let t = if t.dim() == 4 {
                alexnet_rs::ops::channels_last(t).unwrap()
            } else {
                t.shallow_clone()
            };
            (k.clone(), t)
        })
        .collect();
    assert!(!cl["conv1.weight"].is_contiguous());
    let v: BTreeMap<String, Tensor> = cl.iter().map(|(k, t)| (k.clone(), t.zeros_like())).collect();
    let mut s = state;
    s.step = 3;
    checkpoint::save(&run, &s, &cl, &v, 2).expect("a channels_last checkpoint saves");
    let c = checkpoint::load(&run).unwrap();
    for (k, t) in &w {
        assert!(c.weights[k].equal(t), "{k}");
    }
}

#[test]
fn recovery_restores_a_hidden_old_copy_over_an_incomplete_visible_one() {
    let _s = serial();
    // A complete `.ckpt-4.old` and an incomplete `ckpt-4`: recovery removed the incomplete one
    // through the `.old` name, deleting the copy it was restoring, and then failed (no such file).
    let (run, _, _) = run_with("recover-old", &[2, 4]);
    let root = run.join("checkpoints");
    copy_dir(&ckpt(&run, 4), &root.join(".ckpt-000000004.old"));
    fs::remove_file(ckpt(&run, 4).join("state.json")).unwrap();
    assert_eq!(checkpoint::recover(&run).unwrap(), ckpt(&run, 4));
    assert!(checkpoint::is_complete(&ckpt(&run, 4)));
    assert_eq!(checkpoint::load(&run).unwrap().state.step, 4);
}

#[test]
fn weights_are_not_saved_beside_a_runs_hidden_checkpoints() {
    let _s = serial();
    // A crash left the run's newest checkpoint hidden (`.ckpt-4.tmp`, complete): saving weights
    // there counted only visible ones, deleted it as a leftover and wrote a step-0 checkpoint.
    let (run, _, w) = run_with("save-beside-hidden", &[4]);
    let root = run.join("checkpoints");
    fs::rename(ckpt(&run, 4), root.join(".ckpt-000000004.tmp")).unwrap();
    let e = checkpoint::save_weights(&run, Preset::Cnn4, 32, &w, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds a training run"), "{e}");
    assert!(checkpoint::is_complete(&root.join(".ckpt-000000004.tmp")));
    // Nor beside checkpoints shared without their optimizer state (pruning deleted them).
    let (run, _, w) = run_with("save-beside-weights-only", &[2, 4]);
    for s in [2, 4] {
        fs::remove_file(ckpt(&run, s).join("optimizer.safetensors")).unwrap();
    }
    let e = checkpoint::save_weights(&run, Preset::Cnn4, 32, &w, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds a training run"), "{e}");
    assert!([2, 4]
        .iter()
        .all(|&s| ckpt(&run, s).join("weights.safetensors").is_file()));
    // Nor while another process holds the run (a training that has no checkpoint yet).
    let fresh = tmp("save-while-held");
    let _held = alexnet_rs::files::RunLock::acquire(&fresh).unwrap();
    let e = checkpoint::save_weights(&fresh, Preset::Cnn4, 32, &w, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("being written by another"), "{e}");
}

#[test]
fn a_checkpoint_stripped_of_its_optimizer_state_evaluates_but_is_not_resumed_or_deleted() {
    let _s = serial();
    // The newest checkpoint without optimizer.safetensors (weights shared without the momentum):
    // eval read the older ckpt-2 in silence, --resume deleted ckpt-4 as "incomplete", and alone
    // it was "no complete checkpoint here (ckpt-4 lack state.json or weights)".
    let (run, _, _) = run_with("stripped", &[2, 4]);
    fs::remove_file(ckpt(&run, 4).join("optimizer.safetensors")).unwrap();
    assert_eq!(checkpoint::load_weights(&run).unwrap().state.step, 4);
    assert_eq!(checkpoint::load_weights(&ckpt(&run, 4)).unwrap().state.step, 4);
    let e = checkpoint::recover(&run).unwrap_err().to_string();
    assert!(
        e.contains("ckpt-000000004 lacks optimizer.safetensors") && e.contains("ckpt-000000002"),
        "{e}"
    );
    assert!(ckpt(&run, 4).join("weights.safetensors").is_file());
    for older in [0, 2] {
        fs::remove_dir_all(ckpt(&run, older)).unwrap();
    }
    let e = checkpoint::load(&run)
        .err()
        .expect("no complete checkpoint")
        .to_string();
    assert!(e.contains("ckpt-000000004 lacks optimizer.safetensors"), "{e}");
    assert_eq!(checkpoint::load_weights(&run).unwrap().state.step, 4);
}

#[test]
fn resume_never_deletes_a_visible_checkpoint_folder() {
    let _s = serial();
    // A crash leaves only hidden folders; a visible one lacking state.json (a copy cut short, a
    // user's edit) was deleted by --resume as crash debris, its weights and momentum with it,
    // and the run went on from the step before.
    let (run, _, _) = run_with("visible-incomplete", &[2, 4]);
    fs::remove_file(ckpt(&run, 4).join("state.json")).unwrap();
    let e = checkpoint::recover(&run).unwrap_err().to_string();
    assert!(
        e.contains("ckpt-000000004 lacks state.json") && e.contains("ckpt-000000002"),
        "{e}"
    );
    assert!(ckpt(&run, 4).join("weights.safetensors").is_file());
    // An older one is left alone too; the newest complete one is resumed.
    fs::rename(ckpt(&run, 4), run.join("checkpoints").join("ckpt-000000001")).unwrap();
    assert_eq!(checkpoint::recover(&run).unwrap(), ckpt(&run, 2));
    assert!(ckpt(&run, 1).join("optimizer.safetensors").is_file());
}

#[test]
fn a_paper_checkpoint_from_before_the_per_tower_lrn_is_told_apart() {
    // Its LRN normalised across the two towers; it now runs per tower, with nothing to say so.
    let state = |preset| {
        let run = tmp(&format!("network-revision-{preset}"));
        let mut cfg = Config::preset(preset, 10).unwrap();
        cfg.input_size = 67;
        let w = model::init_seeded(&cfg, 1).unwrap();
        let dir = checkpoint::save_weights(&run, preset, 67, &w, None).unwrap();
        let fresh = checkpoint::load_weights(&dir).unwrap().state;
        // As an older build wrote it: no `network` field.
        let mut json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("network");
        fs::write(dir.join("state.json"), json.to_string()).unwrap();
        let old = checkpoint::load_weights(&dir).unwrap().state;
        let model = old.config.model_config(10).unwrap();
        (fresh.changed_network(&model), old.changed_network(&model))
    };
    let (fresh, old) = state(Preset::Paper);
    assert_eq!(fresh, None);
    assert!(old.is_some_and(|w| w.contains("two towers")));
    assert_eq!(state(Preset::Caffe), (None, None), "caffe's LRN did not change");
}

#[test]
fn a_new_best_whose_save_fails_keeps_the_old_best() {
    let _s = serial();
    // --keep 1, ckpt 10 the best and 20 the newest: saving 30, a new best, first pruned down to
    // the newest and the state's best (30, not on disk yet), deleting 10; the write then failed
    // (a full disk) and the best weights were gone.
    let (run, mut state, w) = run_with("best-kept", &[]);
    let v: BTreeMap<String, Tensor> = w.iter().map(|(k, t)| (k.clone(), t.zeros_like())).collect();
    state.best_step = Some(10);
    for s in [10, 20] {
        state.step = s;
        checkpoint::save(&run, &state, &w, &v, 1).unwrap();
    }
    assert!(ckpt(&run, 10).is_dir() && ckpt(&run, 20).is_dir());
    (state.step, state.best_step) = (30, Some(30));
    // safetensors has no complex dtype: the write fails.
    let mut unwritable: BTreeMap<String, Tensor> = v.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    unwritable.insert(
        "z".into(),
        Tensor::zeros([1], (tch::Kind::ComplexFloat, tch::Device::Cpu)),
    );
    assert!(checkpoint::save(&run, &state, &w, &unwritable, 1).is_err());
    assert!(
        ckpt(&run, 10).is_dir(),
        "the best checkpoint was pruned before a write that failed"
    );
    assert!(ckpt(&run, 20).is_dir() && !ckpt(&run, 30).exists());
}

#[test]
fn a_confusion_matrix_too_large_to_count_is_refused_before_the_evaluation() {
    let _s = serial();
    // A checkpoint of more classes than a confusion matrix is counted for: `eval --confusion`
    // evaluated the whole test set first, then refused (here: the missing data said so instead).
    let run = tmp("confusion-classes");
    let classes = alexnet_rs::train::CONFUSION_CLASSES as usize + 1;
    let cfg = Config::preset(Preset::Cnn4, classes as i64).unwrap();
    let w = model::init_whole(&cfg).unwrap();
    checkpoint::save_weights(&run, Preset::Cnn4, 32, &w, None).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .arg("eval")
        .arg(&*run)
        .arg("--data")
        .arg(run.join("no-such-data"))
        .arg("--confusion")
        .arg(run.join("confusion.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("--confusion: {classes} classes are more than")),
        "{err}"
    );
}

#[test]
fn weights_saved_into_a_folder_not_named_in_utf8_are_refused_before_any_write() {
    // The state's settings are JSON text: the save failed at state.json ("cannot serialise
    // state"), leaving a lock and an empty checkpoints/ folder.
    use std::os::unix::ffi::OsStrExt;
    let root = tmp("save-not-utf8");
    let run = root.join(std::ffi::OsStr::from_bytes(b"r\xffx"));
    let cfg = Config::preset(Preset::Cnn4, 10).unwrap();
    let w = model::init_whole(&cfg).unwrap();
    let e = checkpoint::save_weights(&run, Preset::Cnn4, 32, &w, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out: the path") && e.contains("not UTF-8"), "{e}");
    assert!(!run.exists());
}

#[test]
fn a_hand_edited_state_is_refused_naming_what_does_not_hold() {
    // Each was trusted: a step past the folder's name (the step wrapped on resume, and the older
    // checkpoint stayed the newest), a negative learning rate (trained on), a network revision
    // of a newer build, a class name twice.
    let _s = serial();
    let (run, _, _) = run_with("edited-state", &[4]);
    let path = ckpt(&run, 4).join("state.json");
    let good: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("/step", 18446744073709551615u64.into(), "folder's name says step 4"),
        ("/schedule/lr", (-1.0).into(), "schedule's lr is -1"),
        ("/schedule/base_lr", 0.0.into(), "schedule's base_lr is 0"),
        ("/network", 99.into(), "network revision 99 is newer"),
        ("/classes/1", "0".into(), "`0` twice"),
    ];
    for (pointer, value, needle) in cases {
        let mut edited = good.clone();
        *edited.pointer_mut(pointer).unwrap() = value;
        fs::write(&path, edited.to_string()).unwrap();
        for e in [checkpoint::load(&run).err(), checkpoint::load_weights(&run).err()] {
            let e = e.expect(pointer).to_string();
            assert!(e.contains("state.json") && e.contains(needle), "{pointer}: {e}");
        }
    }
    fs::write(&path, good.to_string()).unwrap();
    assert_eq!(checkpoint::load(&run).unwrap().state.step, 4);
}
