use super::*;
use std::cell::Cell;

/// A run folder with a cnn4 checkpoint at step 0 (and the weights written, for more saves).
fn run_with_a_checkpoint(name: &str) -> (PathBuf, BTreeMap<String, Tensor>) {
    let run = std::env::temp_dir().join(format!("alexnet-ckpt-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&run);
    let cfg = Config::preset(crate::Preset::Cnn4, 2).unwrap();
    let weights = crate::model::init_whole(&cfg).unwrap();
    save_weights(&run, crate::Preset::Cnn4, 32, &weights, None).unwrap();
    (run, weights)
}

/// Saves the run's checkpoint again, as step `step`, keeping one.
fn save_at(run: &Path, weights: &BTreeMap<String, Tensor>, step: u64) {
    let c = load(run).unwrap();
    let state = TrainState { step, ..c.state };
    save(run, &state, weights, &c.velocity, 1).unwrap();
}

#[test]
fn a_checkpoint_pruned_or_replaced_while_read_is_found_again() {
    // Found as the newest, then pruned by the training process's next save before it was read:
    // `alexnet eval` of a run in progress failed ("weights.safetensors: missing").
    let (run, weights) = run_with_a_checkpoint("pruned");
    let calls = Cell::new(0);
    let c = read_newest(&run, false, |dir| {
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            save_at(&run, &weights, 10); // keep 1: ckpt-0 is pruned
            assert!(!dir.exists());
        }
        read(dir, true)
    })
    .unwrap();
    assert_eq!((c.state.step, calls.get()), (10, 2));
    // Replaced by a save of the same step (an epoch's end after a --checkpoint-every save): the
    // name is the same, the folder another.
    calls.set(0);
    let c = read_newest(&run, true, |dir| {
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            save_at(&run, &weights, 10);
            return Err(bad(&dir, "missing")); // what a read of the folder being swapped saw
        }
        read(dir, false)
    })
    .unwrap();
    assert_eq!((c.state.step, calls.get()), (10, 2));
    // A damaged checkpoint that nothing replaces is an error at once, not read again.
    let newest = find_latest(&run).unwrap();
    fs::write(newest.join("weights.safetensors"), b"cut").unwrap();
    calls.set(0);
    let e = read_newest(&run, false, |dir| {
        calls.set(calls.get() + 1);
        read(dir, true)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a readable safetensors file"), "{e}");
    assert_eq!(calls.get(), 1);
    fs::remove_dir_all(&run).unwrap();
}
