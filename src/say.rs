//! Lines for the user on stderr, each in one write (the lines of a data-parallel run's ranks, or
//! of a process's threads, do not interleave mid-line). In a data-parallel run, [`note`]s come
//! from rank 0 alone: every rank would say the same.
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// A message about the run as a whole (a warning, a decision): rank 0's alone.
pub fn note(msg: &str) {
    if RANK.load(Ordering::Relaxed) == 0 {
        line(msg);
    }
}

/// An error line: `error: ...`, naming the rank in a data-parallel run's other ranks.
pub fn error(msg: &str) {
    match RANK.load(Ordering::Relaxed) {
        0 => line(&format!("error: {msg}")),
        r => line(&format!("error (rank {r}): {msg}")),
    }
}
