//! The `alexnet` command inside the extension: `python -m alexnet_rs` and the wheel's `alexnet`
//! console script run the very CLI of the standalone binary (`crate::cli`), so a machine with
//! Python and torch but no Rust toolchain has it. torch is already loaded by Python, so the
//! extension finds libtorch without a runpath into the build machine. Under torchrun,
//! `python -m alexnet_rs.train` passes its rank and `torch.distributed.all_reduce` along.
use super::boundary::guard;
use crate::error::Error;
use crate::train::Group;
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use std::ffi::OsString;

/// Runs `alexnet` with `argv` (program name first) and returns its exit code (0 success, 1 a
/// failed command, 2 a usage error). It prints to the process's stdout and stderr, as the binary.
/// With `all_reduce` (a callable summing a tensor over the ranks in place), `alexnet train` runs
/// as rank `rank` of `world_size` (data parallel; `local_rank` picks this node's devices).
#[pyfunction]
#[pyo3(signature = (argv, rank=0, world_size=1, local_rank=0, all_reduce=None))]
pub fn cli(
    py: Python<'_>,
    argv: Vec<String>,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    all_reduce: Option<PyObject>,
) -> PyResult<u8> {
    guard(|| {
        let args = argv.into_iter().map(OsString::from);
        let Some(f) = all_reduce else {
            return Ok(py.allow_threads(|| crate::cli::run(args)));
        };
        let sum = move |t: &tch::Tensor| -> crate::Result<()> {
            Python::with_gil(|py| {
                f.call1(py, (PyTensor(t.shallow_clone()),)).map(|_| ()).map_err(|e| {
                    // A Ctrl-C Python took before `alexnet train` installed its handlers (torchrun
                    // forwards it to every rank while they start) is raised here: an interruption.
                    if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                        Error::Interrupted(libc::SIGINT)
                    } else {
                        Error::Torch(format!("torch.distributed all_reduce failed: {e}"))
                    }
                })
            })
        };
        let group = Group {
            rank,
            world: world_size,
            local_rank,
            all_reduce: &sum,
        };
        Ok(py.allow_threads(|| crate::cli::run_in(args, Some(&group))))
    })
}
