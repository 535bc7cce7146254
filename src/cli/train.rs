//! `alexnet train` and `alexnet experiment`. Their settings are `TrainConfig`'s own flags; a flag
//! given on the command line overrides the TOML file (`--config`) or the experiment's defaults.
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::experiment::{self, Experiment};
use crate::settings::{choice, finite, TrainConfig};
use crate::train::{self, EvalResult, Event, Group};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

#[derive(Args)]
pub struct TrainArgs {
    /// Continue the run saved in this folder (its newest checkpoint), bit for bit.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Continue the run in --out (with --resume and no --out: in the resumed run's folder) if it
    /// has a checkpoint, else start it, or continue --resume's (for jobs that may be restarted:
    /// torchrun --max-restarts, preemptible machines).
    #[arg(long)]
    auto_resume: bool,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// The training settings of a command: a TOML file and the flags.
#[derive(Args)]
pub struct SettingsArgs {
    /// TOML file with any of the settings below (flags given here override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Settings put back to their [default]s, comma-separated keys (limit_train,torch_init,lrn):
    /// what --config or the experiment's defaults set and a flag cannot undo.
    #[arg(long, value_name = "KEYS", value_delimiter = ',')]
    reset: Vec<String>,
    #[command(flatten)]
    settings: TrainConfig,
}

impl SettingsArgs {
    /// `base` with the TOML file's settings, if any, then the `--reset` ones back at their
    /// defaults, and then the flags given on the command line laid over it.
    fn settings(&self, base: TrainConfig, matches: &ArgMatches) -> Result<TrainConfig> {
        let base = match &self.config {
            Some(p) => TrainConfig::from_toml_over(&base, p)?,
            None => base,
        };
        let flagged = |key: &str| {
            matches
                .try_get_raw(key)
                .is_ok_and(|_| matches.value_source(key) == Some(ValueSource::CommandLine))
        };
        let both = crate::settings::describe()
            .into_iter()
            .find(|d| flagged(&d.key) && self.reset.iter().any(|k| crate::settings::setting_key(k) == d.key));
        if let Some(d) = both {
            return Err(Error::Config(format!(
                "--reset {} and {} are both given: give one",
                d.key, d.flag
            )));
        }
        TrainConfig::overlay(&base.reset(&self.reset)?, matches)
    }
}

#[derive(Args)]
pub struct ExperimentArgs {
    #[arg(value_parser = choice::<Experiment>(Experiment::ALL.map(Experiment::name)))]
    experiment: Experiment,
    /// Seeds per arm (seed, seed+1, ...).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Learning rates tried for each arm: relu-vs-tanh compares each activation's best
    /// [default: 0.01,0.03,0.1]; the ablations pair their arms at each rate [default: --lr].
    #[arg(long, value_delimiter = ',', value_parser = finite)]
    lrs: Vec<f64>,
    /// relu-vs-tanh: the training errors to time (the paper's 25 %, and a stricter one for an
    /// easier dataset).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.15", value_parser = finite)]
    target_errors: Vec<f64>,
    /// Training settings; unset ones take the experiment's defaults (relu-vs-tanh: cnn4 at 28x28,
    /// 4 epochs, no weight decay, constant lr; the others: paper at 63x63 with PyTorch init, 10k images,
    /// 5 epochs, cosine lr; batch 128, lr 0.01; --out runs/experiments).
    #[command(
        flatten,
        next_help_heading = "Training settings (unset: the experiment's defaults, not the [default]s below)"
    )]
    train: SettingsArgs,
}

/// Ctrl-C (SIGINT) or SIGTERM (a preempted machine, a job scheduler): finish the step, write a
/// checkpoint, stop; the exit code is 128 + the signal's number (130, 143). A second signal ends
/// the process at once (the newest checkpoint stays as it was). 0: none yet.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// When [`SIGNAL`] came (CLOCK_MONOTONIC, nanoseconds).
static SIGNAL_AT: AtomicU64 = AtomicU64::new(0);
/// A signal this soon after the first is the same request delivered twice, not a second one: a
/// scheduler signals a job's whole process group, and torchrun (or srun) forwards the signal it
/// got to its workers, which got it already. Both arrived within milliseconds; the second one
/// ended every rank before its checkpoint.
const REPEAT_NS: u64 = 2_000_000_000;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// [`on_signal`] for SIGINT and SIGTERM while it lives; the handlers before it (the default's,
/// or Python's when the CLI runs inside an interpreter) are put back when it is dropped.
struct Handlers([(libc::c_int, libc::sighandler_t); 2]);

impl Handlers {
    fn install() -> Handlers {
        // SAFETY: the handler calls only async-signal-safe functions.
        Handlers([libc::SIGINT, libc::SIGTERM].map(|s| {
            (s, unsafe {
                libc::signal(s, on_signal as *const () as libc::sighandler_t)
            })
        }))
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for &(signal, previous) in &self.0 {
            // SAFETY: restores the handler `install` replaced.
            unsafe { libc::signal(signal, previous) };
        }
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    let now = monotonic_ns();
    if SIGNAL.load(Ordering::SeqCst) != 0 {
        if now.saturating_sub(SIGNAL_AT.load(Ordering::SeqCst)) < REPEAT_NS {
            return;
        }
        // SAFETY: signal and raise are async-signal-safe. The signal is blocked while its handler
        // runs, so the raised one ends the process when this returns: not a word more.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        return;
    }
    SIGNAL_AT.store(now, Ordering::SeqCst);
    SIGNAL.store(signal, Ordering::SeqCst);
    const MSG: &[u8] = b"\nstopping after this step with a checkpoint (during an evaluation: at its next batch; a signal 2 s or more from now quits at once)\n";
    // SAFETY: write is async-signal-safe; MSG outlives the call.
    unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
}

pub fn train(a: &TrainArgs, matches: &ArgMatches, group: Option<&Group>) -> Result<()> {
    let tc = a.settings.settings(TrainConfig::default(), matches)?;
    // In a data-parallel run rank 0 reports; the others train quietly.
    let quiet = group.is_some_and(|g| g.rank > 0);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}, ETA {eta}] {msg}")
            .expect("valid template"),
    );
    SIGNAL.store(0, Ordering::SeqCst);
    // Installed once the run has started (its first step is next): a signal during the start-up
    // (reading the data, recovering a crashed run) ends the process by the signal itself.
    let handlers = std::cell::RefCell::new(None);
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // Stopped on request: by this process's signal, or by another rank's.
    let stopped = std::cell::Cell::new(false);
    let resume = resume_from(a, &tc, group)?;
    // Said once the run has started: a --resume that cannot be read is an error, not a resume.
    let announce = resume.as_deref().filter(|_| a.auto_resume && !quiet);
    let mut on_event = |e: &Event| {
        if matches!(e, Event::Start { .. }) && handlers.borrow().is_none() {
            *handlers.borrow_mut() = Some(Handlers::install());
            if let Some(r) = announce {
                crate::say::line(&format!("resuming the run in {}", r.display()));
            }
        }
        stopped.set(stopped.get() || matches!(e, Event::Stopped));
        if !quiet {
            report(&bar, e)
        }
    };
    let stop = || SIGNAL.load(Ordering::SeqCst) != 0;
    let result = match group {
        Some(g) => train::train_in(&tc, resume.as_deref(), g, &mut on_event, &stop)?,
        None => train::train(&tc, resume.as_deref(), &mut on_event, &stop)?,
    };
    bar.finish_and_clear();
    // Training is over: a signal from now on is not a request to stop after a step.
    drop(handlers.take());
    let out = writes_to(resume.as_deref(), &tc);
    let stopped_by = stopped.get().then(|| SIGNAL.load(Ordering::SeqCst));
    outcome(&result, stopped_by, quiet, &out, group.map_or(1, |g| g.world))
}

/// How a run that returned `result` ends for this process. Not stopped (a signal that came
/// after the last step did not stop the run short): complete, "final:" and exit 0. Stopped by
/// this process's signal `Some(s)`: interrupted (exit 128 + s); by another rank's (`Some(0)`):
/// a failure, so that no rank says "final:" of a run cut short. Rank 0 (not `quiet`) reports
/// either, with the checkpoint and the command (for its `ranks`) to resume from.
fn outcome(result: &EvalResult, stopped_by: Option<i32>, quiet: bool, out: &Path, ranks: usize) -> Result<()> {
    let Some(signal) = stopped_by else {
        if !quiet {
            crate::say::outln!(
                "final: top-1 {:.4}, top-5 {:.4}, loss {:.4} on {} samples; metrics, curves.png and checkpoints in {}",
                result.top1,
                result.top5,
                result.loss,
                result.samples,
                out.display()
            )?;
        }
        return Ok(());
    };
    if !quiet {
        let ckpt = checkpoint::find_latest(out).unwrap_or(out.to_path_buf());
        crate::say::line(&format!(
            "{}: top-1 {:.4}, top-5 {:.4}, loss {:.4} on {} samples; checkpoint {}; continue with {}",
            if signal != 0 {
                "interrupted"
            } else {
                "stopped by another rank"
            },
            result.top1,
            result.top5,
            result.loss,
            result.samples,
            ckpt.display(),
            resume_command(out, ranks)
        ));
    }
    Err(match signal {
        0 => crate::Error::SomeFailed(format!(
            "the run stopped early because another rank was interrupted; continue with {}",
            resume_command(out, ranks)
        )),
        s => crate::Error::Interrupted(s),
    })
}

/// The command that continues the run in `out` trained by `ranks` ranks (a data-parallel run
/// needs as many).
fn resume_command(out: &Path, ranks: usize) -> String {
    match ranks {
        1 => format!("`alexnet train --resume {}`", out.display()),
        n => format!(
            "`torchrun --nproc_per_node {n} -m alexnet_rs.train --resume {}` ({n} ranks in all, on one node or several)",
            out.display()
        ),
    }
}

/// The run to continue. With --auto-resume: the one in the folder this run writes (--out, else
/// the resumed run's own) if it has a checkpoint (rank 0 first puts back what a crash left
/// hidden, the others wait), else --resume's.
fn resume_from(a: &TrainArgs, tc: &TrainConfig, group: Option<&Group>) -> Result<Option<PathBuf>> {
    if !a.auto_resume {
        // Every rank meets recover_run's barrier, given --auto-resume or not: one without went on
        // to the next collective, and gloo aborted the run on the mismatch. (Whether they resume
        // alike is checked next, as for --resume.)
        group.map_or(Ok(()), Group::barrier)?;
        return Ok(a.resume.clone());
    }
    let own = writes_to(a.resume.as_deref(), tc);
    train::recover_run(&own, group)?;
    Ok(match checkpoint::find_latest(&own) {
        Ok(_) => Some(own),
        Err(_) => a.resume.clone(),
    })
}

/// The folder a run writes: --out, else (resumed without one) the resumed run's own folder.
fn writes_to(resume: Option<&std::path::Path>, tc: &TrainConfig) -> PathBuf {
    match resume {
        Some(r) if !tc.gave("out", tc.out != TrainConfig::default().out) => train::run_of(r).to_path_buf(),
        _ => tc.out.clone(),
    }
}

/// Progress: a bar on a terminal; plain stderr lines without one (indicatif drops println of a
/// hidden bar, which would hide every epoch's result in CI or under nohup).
fn report(bar: &ProgressBar, e: &Event) {
    let say = |msg: &str| {
        if bar.is_hidden() {
            crate::say::line(msg);
        } else {
            bar.println(msg);
        }
    };
    match e {
        Event::Start {
            epoch,
            batch_in_epoch,
            batches_per_epoch,
        } => {
            bar.set_length(*batches_per_epoch);
            bar.set_position(*batch_in_epoch);
            // Epochs are numbered from 1 on screen, as in epochs.csv (the events count the
            // epochs done before the step).
            bar.set_prefix((epoch + 1).to_string());
        }
        Event::Step(r) => {
            bar.set_prefix((r.epoch + 1).to_string());
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} img/s",
                r.loss, r.lr, r.images_per_s
            ));
            if bar.is_hidden() && r.step % 100 == 0 {
                crate::say::line(&format!(
                    "epoch {} step {}: loss {:.4}, lr {:.2e}, {:.0} img/s",
                    r.epoch + 1,
                    r.step,
                    r.loss,
                    r.lr,
                    r.images_per_s
                ));
            }
        }
        Event::Epoch(r) => {
            say(&format!(
                "epoch {:>3} step {:>7}: train loss {:.4}, val loss {:.4}, top-1 {:.4}, top-5 {:.4}, lr {:.2e}, {:.0} s",
                r.epoch, r.step, r.train_loss, r.val_loss, r.val_top1, r.val_top5, r.lr, r.seconds
            ));
            bar.set_position(0);
        }
        Event::Checkpoint(d) => say(&format!("checkpoint {}", d.display())),
        Event::Evaluating { done, total } => bar.set_message(format!("evaluating: batch {}/{total}", done + 1)),
        Event::Stopped => {}
    }
}

pub fn experiment(a: &ExperimentArgs, matches: &ArgMatches) -> Result<()> {
    let exp = a.experiment;
    if exp != Experiment::ReluVsTanh && matches.value_source("target_errors") == Some(ValueSource::CommandLine) {
        return Err(Error::Config(format!(
            "--target-errors times relu-vs-tanh's runs; {} has no training-error targets",
            exp.name()
        )));
    }
    let defaults = exp.defaults();
    let tc = a.train.settings(defaults.clone(), matches)?;
    let size_given = matches.value_source("input_size") == Some(ValueSource::CommandLine);
    if tc.preset != defaults.preset && tc.input_size == defaults.input_size && !size_given {
        // The experiment's input size is its own network's: say where one too small came from.
        tc.model_config(1).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!(
                "{m} (input size {}: the {} experiment's default for the {} network; give --input-size for {})",
                tc.input_size,
                exp.name(),
                defaults.preset,
                tc.preset
            )),
            e => e,
        })?;
    }
    // An lr given (by flag or in --config's file) replaces the default sweep.
    let lrs = if a.lrs.is_empty() && !tc.gave("lr", false) {
        exp.default_lrs()
    } else {
        a.lrs.clone()
    };
    let summary = experiment::run(exp, &tc, a.seeds, &lrs, &a.target_errors)?;
    crate::say::outln!("{}", summary.markdown)?;
    crate::say::outln!("summary: {}", tc.out.join(format!("{}.md", exp.name())).display())?;
    Ok(())
}
