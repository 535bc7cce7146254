//! Lines for the user on stderr, each in one write (the lines of a data-parallel run's ranks, or
//! of a process's threads, do not interleave mid-line). In a data-parallel run, [`note`]s come
//! from rank 0 alone: every rank would say the same. Under [`capture_warnings`] (Python's
//! `train`), warnings are kept for the caller to raise as Python warnings instead.
use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// This thread's warnings, kept while [`capture_warnings`] runs.
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's `warning: ` notes kept (see [`take_warnings`]) instead of
/// printed; returns its result and the warnings not taken.
pub fn capture_warnings<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    let before = CAPTURED.with(|c| c.replace(Some(Vec::new())));
    let r = f();
    let left = CAPTURED.with(|c| c.replace(before)).unwrap_or_default();
    (r, left)
}

/// The warnings kept so far on this thread (see [`capture_warnings`]), without their prefix.
pub fn take_warnings() -> Vec<String> {
    CAPTURED.with(|c| c.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default())
}

/// This process's rank in a data-parallel run (0 otherwise).
static RANK: AtomicUsize = AtomicUsize::new(0);

/// Sets this process's rank for what follows ([`note`]); 0 when the run is over.
pub fn set_rank(rank: usize) {
    RANK.store(rank, Ordering::Relaxed);
}

/// Writes `msg` and a newline to stderr in one write.
pub fn line(msg: &str) {
    let mut text = String::with_capacity(msg.len() + 1);
    text.push_str(msg);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A message about the run as a whole (a decision, or a `warning: ...`): rank 0's alone.
pub fn note(msg: &str) {
    if RANK.load(Ordering::Relaxed) != 0 {
        return;
    }
    if !msg.strip_prefix("warning: ").is_some_and(kept) {
        line(msg);
    }
}

/// A warning about this process's own work (a skipped file), from every rank: kept under
/// [`capture_warnings`] as it is, else printed.
pub fn warning(msg: &str) {
    if !kept(msg) {
        line(msg);
    }
}

/// Whether `msg` was kept: [`capture_warnings`] runs on this thread.
fn kept(msg: &str) -> bool {
    CAPTURED.with(|c| c.borrow_mut().as_mut().map(|v| v.push(msg.to_string())).is_some())
}

/// An error line: `error: ...`, naming the rank in a data-parallel run's other ranks.
pub fn error(msg: &str) {
    match RANK.load(Ordering::Relaxed) {
        0 => line(&format!("error: {msg}")),
        r => line(&format!("error (rank {r}): {msg}")),
    }
}

/// Writes `text` to stdout (a command's result): a full disk or a closed stdout is an error
/// naming it, not a panic (`println!`'s).
pub fn out(text: &str) -> crate::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|()| o.flush())
        .map_err(crate::error::io(std::path::Path::new("stdout")))
}

/// `println!` through [`out`]: a `Result` to `?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::say::out(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;
