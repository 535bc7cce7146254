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

    try:
        world, rank, local, restarts = _environment()
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


def _environment() -> tuple[int, int, int, int]:
    """(world size, rank, local rank, restart count) from torchrun's variables; without torchrun
    (neither RANK nor WORLD_SIZE set), one process. A partial or bad set is a ValueError naming it
    (a missing RANK was a KeyError traceback; RANK alone ran one whole process in silence)."""
    given = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    if given["RANK"] is None and given["WORLD_SIZE"] is None:
        return 1, 0, 0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    if None in given.values():
        missing = next(k for k, v in given.items() if v is None)
        raise ValueError(f"{missing} is not set but {'WORLD_SIZE' if missing == 'RANK' else 'RANK'} is: torchrun "
                         "sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT together (run under it)")
    values = {}
    for key, default in (("WORLD_SIZE", ""), ("RANK", ""), ("LOCAL_RANK", "0"),
                         ("TORCHELASTIC_RESTART_COUNT", "0")):
        text = os.environ.get(key) or default  # set but empty: RANK/WORLD_SIZE '' are refused
        try:
            values[key] = int(text)
        except ValueError:
            raise ValueError(f"{key}={text!r} is not a whole number") from None
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    for key in ("LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        if values[key] < 0:
            raise ValueError(f"{key}={values[key]} is negative")
    return world, rank, values["LOCAL_RANK"], values["TORCHELASTIC_RESTART_COUNT"]


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
