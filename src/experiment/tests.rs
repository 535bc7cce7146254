//! The ablation summary on hand-made results: each arm is paired with the other arm's runs of the
//! same learning rate and seed.
use super::*;

fn arm(label: &str, lr: f64, top1: &[f64]) -> ArmResult {
    let runs = top1
        .iter()
        .map(|&e| RunResult {
            config: TrainConfig::default(),
            test_top1_error: Some(e),
            test_top5_error: Some(e / 2.0),
            targets: vec![],
            steps_to_target: vec![],
            steps: 1,
            seconds: 1.0,
        })
        .collect();
    ArmResult {
        label: label.into(),
        lr,
        runs,
    }
}

#[test]
fn one_learning_rate_pairs_the_two_arms() {
    let md = ablation_table(
        Experiment::Lrn,
        &[
            arm("with LRN", 0.01, &[0.30, 0.32]),
            arm("without LRN", 0.01, &[0.40, 0.40]),
        ],
    );
    // Differences -10 and -8 points: mean -9, sample standard deviation sqrt(2).
    assert!(md.contains("| with LRN | 2 | 31.00 ± 1.41 |"), "{md}");
    assert!(
        md.contains("| Δ (with LRN − without LRN), paired by seed | 2 | -9.00 ± 1.41 | -4.50 ± 0.71 |"),
        "{md}"
    );
}

#[test]
fn one_seed_shows_no_spread() {
    // A standard deviation of one value is undefined: it was printed as ± 0.00.
    let md = ablation_table(
        Experiment::Lrn,
        &[arm("with LRN", 0.01, &[0.30]), arm("without LRN", 0.01, &[0.40])],
    );
    assert!(md.contains("| with LRN | 1 | 30.00 | 15.00 |"), "{md}");
    assert!(md.contains("paired by seed | 1 | -10.00 | -5.00 |"), "{md}");
    assert!(!md.contains('±'), "{md}");
}

#[test]
fn several_learning_rates_pair_the_arms_of_each_rate() {
    // In the order `run` produces them: every rate of the first arm, then of the second.
    let arms = [
        arm("with LRN", 0.01, &[0.30, 0.32]),
        arm("with LRN", 0.02, &[0.20, 0.22]),
        arm("without LRN", 0.01, &[0.40, 0.40]),
        arm("without LRN", 0.02, &[0.25, 0.21]),
    ];
    let md = ablation_table(Experiment::Lrn, &arms);
    assert!(md.contains("| with LRN, lr 0.02 | 2 | 21.00 ± 1.41 |"), "{md}");
    // lr 0.01: -10, -8; lr 0.02: -5, +1 (mean -2, standard deviation sqrt(18)).
    for row in [
        "| Δ (with LRN − without LRN), lr 0.01, paired by seed | 2 | -9.00 ± 1.41 |",
        "| Δ (with LRN − without LRN), lr 0.02, paired by seed | 2 | -2.00 ± 4.24 |",
    ] {
        assert!(md.contains(row), "{md}\nmissing: {row}");
    }
    assert!(!md.contains("with LRN − with LRN"), "{md}");
}

#[test]
fn fig1_says_how_many_seeds_its_test_error_averages() {
    // relu at lr 0.1: seed 0 finished (error 0.10, 12 steps to 25 %), seed 1 diverged. The mean
    // of the one finished seed was printed alone, as if it were the row's result.
    let mut a = arm("relu", 0.1, &[0.10, 0.20]);
    for (r, (steps, top1)) in a.runs.iter_mut().zip([(Some(12), Some(0.10)), (None, None)]) {
        (r.targets, r.steps_to_target, r.test_top1_error, r.steps) = (vec![0.25], vec![steps], top1, 12);
    }
    let md = fig1_table(&[a], &[0.25]);
    assert!(
        md.contains("| relu | 0.1 | 12, diverged | – | 10.00 (1 of 2 seeds; 1 diverged) |"),
        "{md}"
    );
    // A target that is not a whole percent keeps its digits (12.5 % was printed as 12 %).
    let md = fig1_table(
        &[arm("relu", 0.1, &[0.1])].map(|mut a| {
            (a.runs[0].targets, a.runs[0].steps_to_target) = (vec![0.125], vec![Some(3)]);
            a
        }),
        &[0.125],
    );
    assert!(md.contains("steps to 12.5 % (per seed)"), "{md}");
}
