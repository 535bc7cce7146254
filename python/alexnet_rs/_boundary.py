"""The Python side of the boundary to the Rust extension (its Rust side: src/python/boundary.rs).

pyo3 checks argument types before our Rust code runs, and raises plain ``TypeError``s (naming the
argument: ``argument 'crop': ...``). ``checked`` re-raises those as :class:`DtypeError` (still a
``TypeError``), so every error from a public callable is an ``AlexNetError``. Only errors raised by
the native call itself are mapped; one raised inside a Python callback (``train(on_step=...)``)
passes through untouched. The ``*_arg`` helpers check the arguments of the pure-Python callables.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import sys
from typing import Any, Callable, TypeVar

from .errors import AlexNetError, ConfigError, DtypeError, ShapeError

F = TypeVar("F", bound=Callable[..., Any])


def _raised_by_the_call(e: BaseException) -> bool:
    # A C function adds no traceback entry of its own: an error it raised has only our frame. A
    # callback's error (a builtin's has no frame either) is marked by the Rust side.
    tb = e.__traceback__
    return tb is not None and tb.tb_next is None and not getattr(e, "_alexnet_rs_callback", False)


def checked(fn: F) -> F:
    """``fn`` (a native callable) with pyo3's argument errors as ``AlexNetError``s."""

    # `DataLoader.epoch`; a constructor by its class's name (it said `__new__`).
    where = getattr(fn, "__qualname__", fn.__name__).removesuffix(".__new__")

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AlexNetError:
            raise
        except TypeError as e:
            if _raised_by_the_call(e):
                raise DtypeError(f"{where}: {e}") from None
            raise
        except OverflowError as e:
            if _raised_by_the_call(e):
                what = _out_of_range(fn, args, kwargs) or "an integer argument"
                raise ConfigError(f"{where}: {what} is out of range (a 64-bit integer): {e}") from None
            raise

    return call  # type: ignore[return-value]


def one_line_errors(prog: str) -> Callable[[F], F]:
    """A script's ``main`` (``python -m alexnet_rs.compare``) with an ``AlexNetError`` of its run (a
    missing --data) as argparse reports a bad flag: ``PROG: error: ...`` and exit status 2, not a
    traceback."""

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except AlexNetError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None

        return run  # type: ignore[return-value]

    return wrap


def _out_of_range(fn: Callable[..., Any], args: tuple, kwargs: dict) -> str | None:
    """The argument pyo3 could not convert to a 64-bit integer (its OverflowError does not say)."""
    given = dict(kwargs)
    try:  # positional ones by name, where the signature is known
        given.update(inspect.signature(fn).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        pass
    for name, value in given.items():
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return f"{name} = {value}"
    return None


def tensor_arg(where: str, name: str, value: Any) -> Any:
    import torch

    if not isinstance(value, torch.Tensor):
        raise DtypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def int_arg(where: str, name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DtypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ConfigError(f"{where}: {name} = {value} is out of range (a 64-bit integer)")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: {name} must be >= {minimum}, got {value}")
    return int(value)


def real_arg(where: str, name: str, value: Any) -> float:
    """``value`` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DtypeError(f"{where}: {name} must be a number, got {type(value).__name__}")
    try:
        f = float(value)
    except OverflowError:
        raise ConfigError(f"{where}: {name} is out of range (a float)") from None
    if not math.isfinite(f):
        raise ConfigError(f"{where}: {name} must be finite, got {f}")
    return f


def str_arg(where: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DtypeError(f"{where}: {name} must be a str, got {type(value).__name__}")
    return value


def path_arg(where: str, name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise DtypeError(f"{where}: {name} must be a path (str or os.PathLike), got {type(value).__name__}")
    return os.fspath(value)


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default`` for a setting's value (train(config)): a path (PathLike) as its
    str, a NumPy or other numbers.Integral / numbers.Real scalar as a Python int / float; a bytes
    path, or anything else, a TypeError naming its type."""
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    elif isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"a {type(value).__name__} (give paths as str or pathlib.Path, numbers as int or float)")


def dims_arg(where: str, name: str, t: Any, dims: str, ok: bool) -> None:
    if not ok:
        raise ShapeError(f"{where}: {name} must be {dims}, got shape {list(t.shape)}")


__all__: list[str] = []


def torchrun_environment() -> tuple[int, int, int, int]:
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
