//! Test-only fault injection at the named points of checkpoint and metrics writing, so that the
//! crash and disk-full tests are deterministic (no timing races, no real full disk).
//!
//! `ALEXNET_FAULT=<point>[:abort|:enospc|:kill|:term|:term2|:panic][@<n>]` arms one point: the
//! `n`-th time (default 1) the process reaches it, `abort` (the default) ends the process at once
//! with `std::process::abort()` (no unwinding, no cleanup: what a SIGKILL leaves), `kill` sends it
//! SIGKILL, `term` raises SIGTERM (a polite stop: the handler, if any, runs and the work goes
//! on), `term2` raises it twice in a row (a torchrun worker when its job's whole process group is
//! signalled: it gets the signal, then torchrun's forwarded copy), `panic` panics (a bug, for the
//! panic boundaries' tests), and `enospc` makes the write at that point fail with "No space left
//! on device" (`ErrorKind::StorageFull`), which the code then handles as it would a real full
//! disk. The variable is read once; unset, a point
//! costs one load of an initialised `OnceLock`.
//!
//! Points (in the order a checkpoint save reaches them):
//! - `ckpt-tmp-partial`: `.ckpt-<s>.tmp/` holds the weights but not yet the optimizer state;
//! - `ckpt-tmp-written`: the temporary folder is complete and synced, nothing renamed yet;
//! - `ckpt-old-away`: an existing `ckpt-<s>/` of the same step was renamed to `.ckpt-<s>.old/`;
//! - `ckpt-renamed`: the new folder has been renamed to `ckpt-<s>/`;
//! - `ckpt-before-prune`: just before older checkpoints are pruned;
//! - `metrics-mid-line`: half of a `metrics.jsonl` or `epochs.csv` line has been written;
//! - `train-step`: a training step's update is done, its metrics line not yet written (the
//!   elastic-restart test kills one rank of a torchrun job here);
//! - `eval-batch`: an evaluation is about to look at its next batch (the test of a stop during a
//!   data-parallel run's evaluation signals one rank here);
//! - `figure-write`: a figure (curves.png, or a `filters`/`confusion`/`neighbours` image) is
//!   written to its `.partial` file, not yet renamed into place.
//! - `file-partial`: any file replaced through `files::write_with` (state.json, classes.json,
//!   metrics.jsonl rewritten on resume, figures, statistics, caches, the Python side's ONNX
//!   models and reports) is written and synced to its
//!   `.partial` file, not yet renamed into place.
//! - `experiment-result-written`: an `alexnet experiment` run's `result.json` is in place, its
//!   checkpoints not yet deleted.
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every point's name, for the tests and the error on a misspelt one.
pub const POINTS: [&str; 11] = [
    "ckpt-tmp-partial",
    "ckpt-tmp-written",
    "ckpt-old-away",
    "ckpt-renamed",
    "ckpt-before-prune",
    "metrics-mid-line",
    "train-step",
    "eval-batch",
    "figure-write",
    "file-partial",
    "experiment-result-written",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Abort,
    Enospc,
    /// SIGKILL to this process (what `kill -9` or the OOM killer does).
    Kill,
    /// SIGTERM to this thread (what `kill` or a preempting scheduler does).
    Term,
    /// SIGTERM twice, at once (a signal to a torchrun job's process group, and torchrun's copy).
    Term2,
    /// A Rust panic (what a bug does), for the tests of the panic boundaries.
    Panic,
}

struct Armed {
    point: String,
    mode: Mode,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("ALEXNET_FAULT").ok().filter(|s| !s.is_empty())?;
            Some(parse(&spec).unwrap_or_else(|e| {
                crate::say::line(&format!("ALEXNET_FAULT={spec}: {e}"));
                std::process::exit(2)
            }))
        })
        .as_ref()
}

fn parse(spec: &str) -> Result<Armed, String> {
    let (rest, at) = match spec.split_once('@') {
        Some((r, n)) => (r, n.parse().map_err(|_| format!("bad count `{n}`"))?),
        None => (spec, 1),
    };
    let (point, mode) = match rest.split_once(':') {
        Some((p, "abort")) => (p, Mode::Abort),
        Some((p, "enospc")) => (p, Mode::Enospc),
        Some((p, "kill")) => (p, Mode::Kill),
        Some((p, "term")) => (p, Mode::Term),
        Some((p, "term2")) => (p, Mode::Term2),
        Some((p, "panic")) => (p, Mode::Panic),
        Some((_, m)) => {
            return Err(format!(
                "unknown mode `{m}` (abort, enospc, kill, term, term2 or panic)"
            ))
        }
        None => (rest, Mode::Abort),
    };
    if !POINTS.contains(&point) || at == 0 {
        return Err(format!(
            "expected <point>[:abort|:enospc|:kill|:term|:term2|:panic][@n>=1], points: {}",
            POINTS.join(", ")
        ));
    }
    Ok(Armed {
        point: point.to_string(),
        mode,
        at,
        seen: AtomicU64::new(0),
    })
}

/// Reads `ALEXNET_FAULT` now (the CLI does at start-up, so a misspelt point ends the process
/// before any work, with exit code 2).
pub fn init() {
    let _ = armed();
}

/// Whether the fault armed at `point` fires now (counts this visit). The caller does the partial
/// work the point stands for, then calls [`fire`].
pub fn reached(point: &str) -> Option<Mode> {
    let a = armed()?;
    if a.point != point {
        return None;
    }
    (a.seen.fetch_add(1, Ordering::SeqCst) + 1 == a.at).then_some(a.mode)
}

/// Aborts, kills or panics, or returns the disk-full error the write at this point gets; after a
/// SIGTERM (handled), returns `Ok`.
pub fn fire(mode: Mode, point: &str) -> io::Result<()> {
    if mode == Mode::Abort {
        crate::say::line(&format!("ALEXNET_FAULT: abort at {point}"));
        std::process::abort();
    }
    if mode == Mode::Panic {
        panic!("ALEXNET_FAULT: panic at {point}");
    }
    if mode == Mode::Kill {
        crate::say::line(&format!("ALEXNET_FAULT: SIGKILL at {point}"));
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    if mode == Mode::Term || mode == Mode::Term2 {
        crate::say::line(&format!("ALEXNET_FAULT: SIGTERM at {point}"));
        let times = if mode == Mode::Term2 { 2 } else { 1 };
        for _ in 0..times {
            // SAFETY: signalling this thread; its handler has run when `raise` returns.
            unsafe { libc::raise(libc::SIGTERM) };
        }
        return Ok(());
    }
    Err(io::Error::from_raw_os_error(libc::ENOSPC))
}

/// A point with no partial work of its own: [`fire`]s when armed here.
pub fn point(point: &str) -> io::Result<()> {
    match reached(point) {
        Some(mode) => fire(mode, point),
        None => Ok(()),
    }
}
