//! The summary tables of `alexnet experiment` (markdown): the ablations' paired differences and
//! Fig. 1's steps to each target training error.
use super::{ArmResult, Experiment, RunResult, ERROR_WINDOW};
use std::fmt::Write as _;

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Percent: mean ± sample standard deviation; the mean alone for one seed (no spread is known).
fn pct(xs: &[f64]) -> String {
    let (m, s) = mean_std(xs);
    match xs.len() {
        1 => format!("{:.2}", 100.0 * m),
        _ => format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s),
    }
}

/// Test errors of both arms and their per-seed (paired) difference, paper's choice minus the other,
/// at each learning rate (`--lrs`: the arms' runs at one rate are paired).
pub(super) fn ablation_table(exp: Experiment, arms: &[ArmResult]) -> String {
    // Every ablation run finished: only Fig. 1 tolerates a diverged run.
    let top1 = |r: &RunResult| r.test_top1_error.unwrap_or(f64::NAN);
    let top5 = |r: &RunResult| r.test_top5_error.unwrap_or(f64::NAN);
    let mut lrs: Vec<f64> = Vec::new();
    for a in arms {
        if !lrs.contains(&a.lr) {
            lrs.push(a.lr);
        }
    }
    let at = |lr: f64| {
        if lrs.len() > 1 {
            format!(", lr {lr}")
        } else {
            String::new()
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| {} | seeds | test top-1 error % | test top-5 error % |",
        exp.name()
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for &lr in &lrs {
        let [first, second] = [0, 1].map(|k| arms.iter().filter(|a| a.lr == lr).nth(k));
        let (Some(first), Some(second)) = (first, second) else {
            continue;
        };
        for a in [first, second] {
            let e1: Vec<f64> = a.runs.iter().map(top1).collect();
            let e5: Vec<f64> = a.runs.iter().map(top5).collect();
            let _ = writeln!(
                s,
                "| {}{} | {} | {} | {} |",
                a.label,
                at(lr),
                a.runs.len(),
                pct(&e1),
                pct(&e5)
            );
        }
        let diff = |f: &dyn Fn(&RunResult) -> f64| -> Vec<f64> {
            first.runs.iter().zip(&second.runs).map(|(a, b)| f(a) - f(b)).collect()
        };
        let _ = writeln!(
            s,
            "| Δ ({} − {}){}, paired by seed | {} | {} | {} |",
            first.label,
            second.label,
            at(lr),
            first.runs.len(),
            pct(&diff(&top1)),
            pct(&diff(&top5))
        );
    }
    let _ = writeln!(s, "\nPaper: {}.", exp.paper_claim());
    s
}

/// Steps to each target training error per arm and learning rate, and the ratio tanh / ReLU at
/// each arm's best learning rate (the paper tuned each network's rate for speed).
pub(super) fn fig1_table(arms: &[ArmResult], targets: &[f64]) -> String {
    let mut s = String::new();
    let heads: Vec<String> = targets
        .iter()
        .map(|&g| format!("steps to {} % (per seed) | mean", percent(g)))
        .collect();
    let _ = writeln!(s, "| activation | lr | {} | test top-1 error % |", heads.join(" | "));
    let _ = writeln!(s, "|---|---|{}---|", "---|---|".repeat(targets.len()));
    // Mean steps to target i over the seeds, if every seed reached it.
    let mean_steps = |a: &ArmResult, i: usize| -> Option<f64> {
        let steps: Option<Vec<f64>> = a.runs.iter().map(|r| r.steps_to_target[i].map(|x| x as f64)).collect();
        steps.map(|v| mean_std(&v).0)
    };
    for a in arms {
        let cols: Vec<String> = (0..targets.len())
            .map(|i| {
                let per: Vec<String> = a
                    .runs
                    .iter()
                    .map(|r| match (r.steps_to_target[i], r.test_top1_error) {
                        (Some(x), _) => x.to_string(),
                        (None, Some(_)) => format!("> {}", r.steps),
                        (None, None) => "diverged".into(),
                    })
                    .collect();
                let mean = mean_steps(a, i).map_or("–".into(), |m| format!("{m:.0}"));
                format!("{} | {mean}", per.join(", "))
            })
            .collect();
        let e1: Vec<f64> = a.runs.iter().filter_map(|r| r.test_top1_error).collect();
        let diverged = a.runs.len() - e1.len();
        let test = match (e1.len(), diverged) {
            (0, _) => "diverged".into(),
            (_, 0) => pct(&e1),
            (n, d) => format!("{} ({n} of {} seeds; {d} diverged)", pct(&e1), a.runs.len()),
        };
        let _ = writeln!(s, "| {} | {} | {} | {test} |", a.label, a.lr, cols.join(" | "));
    }
    let _ = writeln!(s);
    for (i, g) in targets.iter().enumerate() {
        let best = |label: &str| {
            arms.iter()
                .filter(|a| a.label == label)
                .filter_map(|a| mean_steps(a, i).map(|m| (m, a.lr)))
                .min_by(|x, y| x.0.total_cmp(&y.0))
        };
        let goal = format!("{} % training error", percent(*g));
        let line = match (best("relu"), best("tanh")) {
            (Some((r, rl)), Some((t, tl))) => format!(
                "{goal}: best rates relu {rl} ({r:.0} steps), tanh {tl} ({t:.0} steps): \
                 tanh needs {:.2}x the steps of ReLU.",
                t / r
            ),
            (Some((r, rl)), None) => {
                format!("{goal}: relu at lr {rl} in {r:.0} steps; tanh did not reach it on every seed at any rate.")
            }
            (None, Some((t, tl))) => {
                format!("{goal}: tanh at lr {tl} in {t:.0} steps; relu did not reach it on every seed at any rate.")
            }
            (None, None) => format!("{goal}: neither reached it on every seed at any rate."),
        };
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(
        s,
        "\nTraining error = mean top-1 error of the last {ERROR_WINDOW} batches, each measured before its update. \
         Test error: when the run stopped (all targets reached, or the last epoch), so not comparable across rows."
    );
    let _ = writeln!(s, "\nPaper: {}.", Experiment::ReluVsTanh.paper_claim());
    s
}

/// A fraction as a percentage with the digits it has (0.25: "25", 0.125: "12.5").
fn percent(g: f64) -> String {
    let s = format!("{:.2}", 100.0 * g);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
