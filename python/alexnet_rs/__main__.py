"""`alexnet`, the console script of the wheel, and `python -m alexnet_rs`: the Rust command line
(the same clap definition and handlers as the standalone `target/release/alexnet`), compiled
into the extension. torch is imported first (by `alexnet_rs`), so no runpath is needed."""

import os
import signal
import sys


def main() -> int:
    # As the standalone binary: a closed pipe ends the program quietly, Ctrl-C interrupts it
    # (`alexnet train` installs its own handler: finish the step, checkpoint, stop).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from alexnet_rs import _native

    # `alexnet bench train` runs its PyTorch anchors with this interpreter (it has torch).
    os.environ.setdefault("ALEXNET_PYTHON", sys.executable)
    sys.stdout.flush()
    return _native.cli(["alexnet", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
