//! The `alexnet` command inside the extension: `python -m alexnet_rs` and the wheel's `alexnet`
//! console script run the very CLI of the standalone binary (`crate::cli`), so a machine with
//! Python and torch but no Rust toolchain has it. torch is already loaded by Python, so the
//! extension finds libtorch without a runpath into the build machine.
use super::boundary::guard;
use pyo3::prelude::*;
use std::ffi::OsString;

/// Runs `alexnet` with `argv` (program name first) and returns its exit code (0 success, 1 a
/// failed command, 2 a usage error). It prints to the process's stdout and stderr, as the binary.
#[pyfunction]
pub fn cli(py: Python<'_>, argv: Vec<String>) -> PyResult<u8> {
    guard(|| Ok(py.allow_threads(|| crate::cli::run(argv.into_iter().map(OsString::from)))))
}
