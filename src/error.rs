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
    /// A failure inside a libtorch call made through tch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file that could not be read or decoded.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Training produced a non-finite loss (the run stopped; earlier checkpoints are intact).
    #[error(
        "loss became {loss} at step {step} (epoch {epoch}): stopping; the last good checkpoint is in {} \
         (try a lower --lr)",
        checkpoints.display()
    )]
    Diverged {
        loss: f64,
        step: u64,
        epoch: u64,
        checkpoints: PathBuf,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
