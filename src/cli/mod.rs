//! `alexnet`: the command line, one file per group of verbs. [`main`] is the whole program
//! (`src/bin/alexnet.rs` only calls it):
//! - `model.rs`: info, forward, placement;
//! - `train.rs`: train, experiment (their settings are [`crate::settings::TrainConfig`]);
//! - `eval.rs`: eval, predict, filters, neighbours;
//! - `data.rs`: stats, prepare, bench data;
//! - `bench.rs`: bench train.
mod bench;
mod data;
mod eval;
mod model;
mod train;

use crate::config::Preset;
use crate::error::{Error, Result};
use crate::settings::choice;
use crate::train::Group;
use clap::builder::TypedValueParser;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "alexnet",
    version,
    about = "AlexNet (2012) on libtorch: the paper's two-tower network, torchvision's and Caffe's",
    long_about = "AlexNet (Krizhevsky, Sutskever & Hinton, 2012) on libtorch, with our own LRN kernel.\n\
                  Presets: `paper` (the 2012 two-tower network: groups 2, LRN k=2), `torchvision` \n\
                  (weight-compatible with torchvision.models.alexnet), `caffe` (BVLC AlexNet) and \n\
                  `cnn4` (the paper's Fig. 1 four-layer network, for the ReLU/tanh experiment)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print each layer's output shape, parameter count and multiply-accumulates, and the totals.
    Info(model::InfoArgs),
    /// Run a forward and a backward pass of a freshly initialised network on real images, and
    /// report the loss, the gradient norms and the time taken (a smoke test of the whole stack).
    Forward(model::ForwardArgs),
    /// Compute a training set's per-pixel mean image, channel mean/std and RGB eigen-pairs (for
    /// PCA colour noise) and save them as safetensors.
    Stats(data::StatsArgs),
    /// Pre-resize every image of a dataset (shorter side to --size) into DST, in parallel;
    /// resumable: outputs already made from the same source with the same settings are skipped.
    Prepare(data::PrepareArgs),
    /// Train a network (default data: Fashion-MNIST from Debian's dataset-fashion-mnist).
    Train(Box<train::TrainArgs>),
    /// Evaluate a checkpoint: top-1/top-5 accuracy on the test split (centre crop or 10 crops).
    Eval(eval::EvalArgs),
    /// Top-5 classes of image files, from a checkpoint.
    Predict(eval::PredictArgs),
    /// The paper's Fig. 3: a checkpoint's first-layer kernels as a PNG grid of colour tiles, one
    /// labelled block per tower, with how much each tower's kernels use colour.
    Filters(eval::FiltersArgs),
    /// The paper's Fig. 4: for query images, the top-5 predictions and the training images whose
    /// fc7 vectors are nearest, as a contact sheet (the training set's vectors cached in the run).
    Neighbours(eval::NeighboursArgs),
    /// Print which device holds each parameter shard under a placement.
    Placement(model::PlacementArgs),
    /// The paper's ablations at small scale on Fashion-MNIST: relu-vs-tanh (Fig. 1, a four-layer
    /// CNN), lrn, overlap-pool, dropout (the paper network at 63x63); each arm over several seeds.
    /// Writes a run folder per arm, learning rate and seed and a summary table
    /// (<out>/<experiment>.md); rerun, the same command reuses the finished runs and continues
    /// interrupted ones from their newest checkpoint.
    Experiment(Box<train::ExperimentArgs>),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Images/s of the data pipeline (decode + resize + crop + flip + PCA noise + normalise).
    Data(data::BenchDataArgs),
    /// Images/s of our training step (forward, loss, backward, SGD) against the same network in
    /// plain PyTorch eager and under torch.compile (--sides; benches/train_step.py, run by the
    /// venv's python) in the same run.
    Train(bench::BenchTrainArgs),
}

/// The `alexnet` program as a process entry point (the standalone binary): a closed pipe ends it
/// quietly (`alexnet info | head`), as other Unix tools, instead of a panic in println!.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    // SAFETY: restoring a default signal disposition at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    ExitCode::from(run(args))
}

/// The `alexnet` program: parses `args` (program name first), runs the verb, prints errors; the
/// same code behind the standalone binary and the wheel's `alexnet` / `python -m alexnet_rs`.
/// Exit codes: 0 success, 1 a failed command, 2 a usage error (clap's).
pub fn run(args: impl IntoIterator<Item = OsString>) -> u8 {
    run_in(args, None)
}

/// [`run`] as one rank of a data-parallel `group`: `alexnet train` trains its share (rank 0
/// reports and writes); `python -m alexnet_rs.train` calls this under torchrun.
pub fn run_in(args: impl IntoIterator<Item = OsString>, group: Option<&Group>) -> u8 {
    crate::fault::init();
    let matches = match allow_negative_numbers(Cli::command()).try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            return match e.print() {
                // --help or --version (exit code 0) that could not be written: as any result.
                Err(w) if e.exit_code() == 0 => {
                    crate::say::error(&format!("stdout: {w}"));
                    1
                }
                _ => e.exit_code() as u8,
            };
        }
    };
    // A bug (a panic) ends the command with an error line and exit code 1, as in Python.
    crate::say::set_rank(group.map_or(0, |g| g.rank));
    let result = crate::error::catch_panic(|| dispatch(&matches, group)).unwrap_or_else(|m| Err(Error::Internal(m)));
    let code = match result {
        Ok(()) => 0,
        Err(Error::Interrupted(signal)) => (128 + signal) as u8, // as a shell reports it: 130 for Ctrl-C
        Err(e) => {
            crate::say::error(&e.to_string());
            1
        }
    };
    crate::say::set_rank(0);
    code
}

/// `--lr -1` as `--lr=-1` (a value to check, not clap's "unexpected argument '-1'"), in every
/// subcommand.
fn allow_negative_numbers(c: clap::Command) -> clap::Command {
    c.allow_negative_numbers(true).mut_subcommands(allow_negative_numbers)
}

fn dispatch(matches: &clap::ArgMatches, group: Option<&Group>) -> Result<()> {
    Cli::from_arg_matches(matches)
        .map_err(|e| Error::Config(e.to_string()))
        .and_then(|cli| {
            let sub = matches
                .subcommand()
                .map(|(_, m)| m)
                .ok_or_else(|| Error::Internal("clap gave no subcommand".into()))?;
            match cli.command {
                Command::Info(a) => model::info(&a),
                Command::Forward(a) => model::forward(&a),
                Command::Placement(a) => model::placement(&a),
                Command::Stats(a) => data::stats(&a),
                Command::Prepare(a) => data::prepare(&a),
                Command::Bench(BenchCommand::Data(a)) => data::bench(&a),
                Command::Bench(BenchCommand::Train(a)) => bench::train(&a),
                Command::Train(a) => train::train(&a, sub, group),
                Command::Experiment(a) => train::experiment(&a, sub),
                Command::Eval(a) => eval::eval(&a),
                Command::Predict(a) => eval::predict(&a),
                Command::Filters(a) => eval::filters(&a),
                Command::Neighbours(a) => eval::neighbours(&a),
            }
        })
}

fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    choice::<Preset>(Preset::CHOICES.map(Preset::name))
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed_precise}}, ETA {{eta}}] {{per_sec}}"
        ))
        .expect("valid template"),
    );
    bar
}

/// A progress callback `(done, total)` that moves `bar`.
fn ticks(bar: &ProgressBar) -> impl Fn(u64, u64) + '_ {
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

/// Runs `work` on a pool of `threads` threads (0: one per core): its rayon loops run there. A
/// pool of its own, not rayon's global one, which can be set once per process (the wheel runs
/// commands in the Python process, one after another).
fn with_threads<T: Send>(threads: usize, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    crate::data::loader::check_threads(threads)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| crate::error::quiet_worker_panics())
        .build()
        .map_err(|e| Error::Config(format!("cannot start {threads} threads: {e}")))?
        .install(work)
}
