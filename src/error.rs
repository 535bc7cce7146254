//! The crate's one error type. The Python binding maps each variant to its own exception class.
use std::path::PathBuf;

/// What went wrong inside one of our torch ops (reported by the C++ side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpErrorKind {
    /// Wrong dtype (C++ `c10::TypeError`).
    Type,
    /// Wrong shape, size or device (C++ `c10::ValueError`).
    Value,
    /// Anything else raised by libtorch.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad preset, flag or configuration value.
    #[error("configuration error: {0}")]
    Config(String),
    /// A tensor of the wrong shape or device handed to the model.
    #[error("{0}")]
    Shape(String),
    /// A tensor of the wrong dtype handed to the model.
    #[error("{0}")]
    Dtype(String),
    /// A parameter the forward pass needs is missing from the parameter set.
    #[error("missing parameter `{0}` (present: {1})")]
    MissingParam(String, String),
    /// A failure inside one of our C++ ops (`alexnet_rs::*`).
    #[error("{message}")]
    Op { kind: OpErrorKind, message: String },
    /// A failure inside a libtorch call made through tch (its message without C++ frames).
    #[error("libtorch: {0}")]
    Torch(String),
    /// A file that could not be read or decoded.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Training produced a non-finite loss, validation loss or weight (the run stopped before
    /// writing a checkpoint of it; earlier checkpoints are intact).
    #[error(
        "{what} became {loss} at step {step} (epoch {epoch}): stopping; {} (try a lower --lr)",
        last_good.as_ref().map_or("no checkpoint was written".into(), |p| format!("the last good checkpoint is {}", p.display()))
    )]
    Diverged {
        /// "the training loss", "the validation loss" or "a weight of <layer>".
        what: String,
        loss: f64,
        step: u64,
        epoch: u64,
        last_good: Option<PathBuf>,
    },
    /// A bug caught at a boundary (a panic in a data thread or under a Python call): reported
    /// as an error instead of ending the thread or the interpreter.
    #[error("internal error (a bug in alexnet_rs, please report it): {0}")]
    Internal(String),
    /// A command did not do all of its job: some items of one that goes on past a bad one failed
    /// (each already reported), or a data-parallel run stopped because another rank was
    /// interrupted.
    #[error("{0}")]
    SomeFailed(String),
    /// Long work stopped on request by this signal (SIGINT: Ctrl-C; a `KeyboardInterrupt` in
    /// Python). The CLI exits with 128 + the signal's number, as a shell reports it.
    #[error("interrupted (signal {0})")]
    Interrupted(i32),
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(clean_torch_message(&e.to_string()))
    }
}

/// libtorch's message without what follows it for C++ developers: the `Exception raised from`
/// location, `frame #n` backtrace lines and the like.
pub fn clean_torch_message(message: &str) -> String {
    // A Debug-formatted error (a panic's `unwrap()` message) has its line breaks escaped.
    let message = message
        .find("\\nException raised from")
        .map_or(message, |at| &message[..at]);
    let mut out: Vec<&str> = Vec::new();
    for line in message.lines() {
        let t = line.trim_start();
        if t.starts_with("Exception raised from") || t.starts_with("frame #") {
            break;
        }
        out.push(line);
    }
    let text = out.join("\n");
    // c10's `[enforce fail at alloc_cpu.cpp:127] err == 0. ` (the C++ location and condition)
    // before an allocation failure's message.
    let text = match text.split_once("[enforce fail at ") {
        Some((before, after)) => match after.split_once("] ").and_then(|(_, c)| c.split_once(". ")) {
            Some((_, message)) => format!("{before}{message}"),
            None => text,
        },
        None => text,
    };
    let text = text.trim_end();
    if text.is_empty() {
        "(no message)".into()
    } else {
        text.to_string()
    }
}

std::thread_local! {
    /// How many [`catch_panic`] calls this thread is inside.
    static CATCHING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f`; a panic inside it (on this thread) is `Err(its message)`, for the caller to report
/// as an error. Such a panic prints nothing itself (Rust's "thread 'main' panicked at ..." lines
/// came before the one error line), unless `RUST_BACKTRACE` asks for a backtrace; a panic
/// nobody catches is printed as ever.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    install_quiet_hook();
    CATCHING.with(|c| c.set(c.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    r.map_err(|p| panic_message(&*p))
}

/// For the worker threads of our rayon pools (their `start_handler`): a panic there reaches a
/// [`catch_panic`] on the thread that handed them the work, so it is quiet as that one's.
pub fn quiet_worker_panics() {
    install_quiet_hook();
    CATCHING.with(|c| c.set(c.get() + 1));
}

fn install_quiet_hook() {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = CATCHING.with(|c| c.get() > 0);
            let backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
            if !caught || backtrace {
                default(info);
            }
        }));
    });
}

/// The message of a caught panic (its payload is a `&str` or a `String` for `panic!`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let raw = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    clean_torch_message(&raw)
}

/// `map_err(io(path))`: an I/O error that names the file it happened to.
pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn a_debug_formatted_torch_error_loses_its_cpp_frames_too() {
        // A tch `unwrap()` panic carries `Torch("...\nException raised from ...")` escaped: the
        // whole frame list stayed on the one error line.
        let m = r#"called `Result::unwrap()` on an `Err` value: Torch("select() cannot be applied to a 0-dim tensor.\nException raised from select at aten/x.cpp:1 (most recent call first):\nframe #0: ...")"#;
        assert_eq!(
            super::clean_torch_message(m),
            r#"called `Result::unwrap()` on an `Err` value: Torch("select() cannot be applied to a 0-dim tensor."#
        );
        assert_eq!(super::clean_torch_message("a\nException raised from x\nframe #0"), "a");
    }

    #[test]
    fn an_allocation_failure_loses_its_cpp_location() {
        let m = "Internal torch error: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't \
                 allocate memory: you tried to allocate 267911424000 bytes. Error code 12 (Cannot allocate memory)";
        assert_eq!(
            super::clean_torch_message(m),
            "Internal torch error: DefaultCPUAllocator: can't allocate memory: you tried to allocate 267911424000 \
             bytes. Error code 12 (Cannot allocate memory)"
        );
    }
}
