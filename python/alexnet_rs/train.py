"""Data-parallel training: the Rust training loop (`alexnet train`, checkpoints, resume, schedules,
the paper's SGD, metrics) under PyTorch's own distributed engine.

    torchrun --nproc_per_node N [--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT] \\
        -m alexnet_rs.train --config run.toml [any `alexnet train` flag]

Every `alexnet train` setting applies, from the TOML file or flags; `--batch-size` is per rank,
so the global batch is batch_size x world_size, in the order one process would use on the
concatenated batch (rank r takes slice r of each global batch from the Rust loader). After each
backward pass the gradients (and the step's loss and error counts) are summed with
`torch.distributed.all_reduce` on the process group torchrun set up: gloo for CPU tensors, NCCL
for CUDA ones. Dropout masks depend on (seed, step, sample), so N ranks train as one process
does on the global batch. Evaluation is sharded and its counts summed; rank 0 alone prints and
writes metrics, curves and checkpoints; a run resumed with --resume continues on every rank (with
the run's number of ranks). Under `torchrun --max-restarts K` a restarted job resumes from the
newest checkpoint it wrote (--auto-resume).
`--devices cuda:0,cuda:1` gives each rank its own pair of the node's GPUs (local rank r:
cuda:2r, cuda:2r+1): the paper's two-GPU split, replicated. Without torchrun it is exactly
`alexnet train`. Run it with -m (imported, the module stands in for the function `alexnet_rs.train`:
calling it trains).
"""

import os
import signal
import sys


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    import torch
    import torch.distributed as dist

    from alexnet_rs import _native
    from alexnet_rs._boundary import torchrun_environment

    try:
        world, rank, local, restarts = torchrun_environment()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if restarts > 0 and "--auto-resume" not in args:
        args.append("--auto-resume")  # a restarted job continues from the newest checkpoint it wrote
    # Test-only (tests/python/test_ddp.py): arm ALEXNET_FAULT on one rank, in the first attempt.
    only = os.environ.get("ALEXNET_FAULT_RANK")
    if only is not None and (int(only) != rank or restarts > 0):
        os.environ.pop("ALEXNET_FAULT", None)
    if world == 1:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        return _native.cli(["alexnet", "train", *args])
    # torchrun's c10d rendezvous hands every restart attempt the same agent store, where the
    # previous attempt's gloo addresses are still written: a restarted rank could connect to a dead
    # peer's port ("Connection refused"). Each attempt gets its own key prefix.
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, world))
    except ValueError as e:  # MASTER_ADDR or MASTER_PORT missing: torch's message, no traceback
        print(f"error: {e} (torchrun sets it)", file=sys.stderr)
        return 2
    store = dist.PrefixStore(f"alexnet_rs/attempt-{restarts}", store)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    try:
        return _native.cli(["alexnet", "train", *args], rank=rank, world_size=world, local_rank=local,
                           all_reduce=dist.all_reduce)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
else:
    import types

    from alexnet_rs import _native
    from alexnet_rs._boundary import checked

    class _CallableModule(types.ModuleType):
        """Importing this module (`import alexnet_rs.train`, as pkgutil.walk_packages and Sphinx
        do) rebinds the package's name `train` to it, where the training function was: calling
        the module calls that function, so `alexnet_rs.train(config)` works either way."""

        __call__ = staticmethod(checked(_native.train))

    sys.modules[__name__].__class__ = _CallableModule
