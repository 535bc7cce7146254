"""Generate the test fixtures of the PyTorch state_dict reader (src/weights/pth/tests.rs).

Run with the project's Python (torch + torchvision); `make test-rust` runs it first:

    .venv/bin/python tests/pth_fixtures.py            # everything
    .venv/bin/python tests/pth_fixtures.py --no-alexnet

Writes into target/pth-fixtures/:

  <name>.pth        a file as torch.save writes it (or a hand-made hostile one)
  <name>.expected   for files that must load: one line per tensor, in file order,
                    tab-separated:
                      name dtype shape strides storage_offset requires_grad
                      storage_group sha256 hex
                    shape/strides are comma-separated ("" for a 0-dim tensor);
                    storage_group is the name of the first tensor sharing this
                    tensor's storage; sha256 and hex are over the *logical*
                    tensor contents (row-major, little-endian), hex is "-" when
                    the tensor is larger than 4 KiB.
  <name>.error      for files that must be refused: substrings (one per line)
                    the Rust error message must contain.
"""
import collections
import hashlib
import os
import pickle
import sys
import warnings
import zipfile

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "target", "pth-fixtures")
os.makedirs(OUT, exist_ok=True)

DTYPES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "Bool",
}


def logical_bytes(t):
    # A fresh, contiguous copy: its bytes are the logical contents in
    # row-major order, whatever the original strides/offset were.
    c = t.detach().cpu().clone(memory_format=torch.contiguous_format)
    return c.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_expected(name, sd):
    lines = []
    first_by_ptr = {}
    for k, t in sd.items():
        st = t.untyped_storage()
        key = (st.data_ptr(), st.nbytes()) if st.nbytes() > 0 else ("empty", k)
        group = first_by_ptr.setdefault(key, k)
        b = logical_bytes(t)
        lines.append("\t".join([
            k, DTYPES[t.dtype],
            ",".join(str(s) for s in t.shape),
            ",".join(str(s) for s in t.stride()),
            str(t.storage_offset()),
            "1" if t.requires_grad else "0",
            group,
            hashlib.sha256(b).hexdigest(),
            b.hex() if len(b) <= 4096 else "-",
        ]))
    with open(os.path.join(OUT, name + ".expected"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_error(name, *needles):
    with open(os.path.join(OUT, name + ".error"), "w") as f:
        f.write("\n".join(needles) + "\n")


def save(name, obj, **kw):
    path = os.path.join(OUT, name + ".pth")
    torch.save(obj, path, **kw)
    return path


def rezip(src, dst, compress=zipfile.ZIP_STORED, replace=None):
    """Copy a torch zip entry by entry with Python's zipfile (a different
    writer: no 64-byte alignment, no zip64 records), optionally compressing
    or replacing entries."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compress) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info.filename, data)


def hand_zip(name, pickle_bytes, byteorder=b"little"):
    """A zip laid out like torch.save's, written by hand (Python zipfile)."""
    path = os.path.join(OUT, name + ".pth")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(name + "/data.pkl", pickle_bytes)
        z.writestr(name + "/byteorder", byteorder)
        z.writestr(name + "/version", b"3\n")
    return path


torch.manual_seed(0)

# (2) small: every dtype, non-contiguous and offset views, shared storage.
base = torch.arange(10, dtype=torch.float32) * 1.5 - 3.0
mat = torch.arange(12, dtype=torch.float32).reshape(3, 4) + 0.25
small = {
    "f32": torch.randn(2, 3),
    "f64": torch.randn(3, dtype=torch.float64),
    "i64": torch.tensor([[-(2 ** 40), 7], [0, 2 ** 62 + 3]], dtype=torch.int64),
    "i32": torch.tensor([-5, 2 ** 31 - 1, -(2 ** 31)], dtype=torch.int32),
    "i16": torch.tensor([-300, 300], dtype=torch.int16),
    "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
    "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True, True]),
    "f16": torch.randn(2, 2).half(),
    "bf16": torch.randn(5).bfloat16(),
    "transposed": mat.t(),                 # strides (1, 4): non-contiguous
    "mat": mat,                            # shares storage with "transposed"
    "base": base,
    "view": base[3:7],                     # storage offset 3, shares "base"
    "strided": base[1::3],                 # stride 3, offset 1, shares "base"
    "cols": mat[:, 1::2],                  # offset 1, strides (4, 2)
    "expanded": torch.tensor([1.0, 2.0, 3.0]).expand(2, 3),  # stride 0
    "scalar": torch.tensor(42.5),          # 0-dim
    "empty": torch.zeros(0, 3),            # no elements
    "grad": torch.ones(2, requires_grad=True),  # requires_grad via _rebuild_tensor_v2
}
save("small", small)
write_expected("small", small)

# The same, pickled with protocol 4 (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL).
save("small_proto4", small, pickle_protocol=4)
write_expected("small_proto4", small)

# The same, re-zipped by Python's zipfile (no alignment padding, no zip64 EOCD).
rezip(os.path.join(OUT, "small.pth"), os.path.join(OUT, "small_pyzip.pth"))
write_expected("small_pyzip", small)

# (3) nn.Parameter objects (_rebuild_parameter).
params = {
    "w": nn.Parameter(torch.randn(3, 4)),
    "b": nn.Parameter(torch.zeros(4), requires_grad=False),
    "plain": torch.arange(3),
}
save("params", params)
write_expected("params", params)

# A real (small) module state_dict: OrderedDict with _metadata set by BUILD,
# BatchNorm's 0-dim int64 num_batches_tracked.
net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
net_sd = net.state_dict()
save("net", net_sd)
write_expected("net", net_sd)

# (1) AlexNet, in both formats.
if "--no-alexnet" not in sys.argv:
    import torchvision
    alex = torchvision.models.alexnet(weights=None).state_dict()
    save("alexnet", alex)
    write_expected("alexnet", alex)
    save("legacy_alexnet", alex, _use_new_zipfile_serialization=False)
    write_expected("legacy_alexnet", alex)

# (5) The legacy format (PyTorch < 1.6, or _use_new_zipfile_serialization=False).
LEGACY = dict(_use_new_zipfile_serialization=False)
save("legacy", small, **LEGACY)
write_expected("legacy", small)
save("legacy_proto4", small, pickle_protocol=4, **LEGACY)  # FRAMEs, even around the magic number
write_expected("legacy_proto4", small)
save("legacy_params", params, **LEGACY)
write_expected("legacy_params", params)
save("legacy_net", net_sd, **LEGACY)
write_expected("legacy_net", net_sd)


class V1Tensor:
    """Pickles as PyTorch < 0.4 did: torch._utils._rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, t):
        self.t = t

    def __reduce__(self):
        t = self.t
        return (torch._utils._rebuild_tensor, (t.storage(), t.storage_offset(), tuple(t.size()), t.stride()))


class Py2OrderedDict:
    """Pickles as Python 2's OrderedDict did: OrderedDict([[key, value], ...])."""

    def __init__(self, d):
        self.d = d

    def __reduce__(self):
        return (collections.OrderedDict, ([[k, V1Tensor(v)] for k, v in self.d.items()],))


old = {k: v for k, v in small.items() if not v.requires_grad}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TypedStorage is deprecated
    path = save("legacy_v1", Py2OrderedDict(old), **LEGACY)
# The reference: torch's own (unrestricted) loader reads the same tensors back.
back = torch.load(path, weights_only=False)
assert list(back) == list(old) and all(
    torch.equal(back[k], v) and back[k].stride() == v.stride() for k, v in old.items())
write_expected("legacy_v1", old)

# (4) Hostile pickles.


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# torch.save itself, a tensor first, then the payload: pickle writes the
# global as `posix.system` on Linux.
save("evil_torchsave", {"w": torch.ones(2), "x": Evil()})
write_error("evil_torchsave", "refuses to call `posix.system`")

save("legacy_evil", {"w": torch.ones(2), "x": Evil()}, **LEGACY)
write_error("legacy_evil", "refuses to call `posix.system`")

# By hand: GLOBAL 'os system', REDUCE with ('echo pwned',).
evil = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03."
hand_zip("evil_os", evil)
write_error("evil_os", "refuses to call `os.system`")

# builtins.eval via STACK_GLOBAL (protocol 4 style).
evil4 = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x071+1\x94\x85\x94R\x94.")
hand_zip("evil_stack_global", evil4)
write_error("evil_stack_global", "refuses to call `builtins.eval`")

# Other refusals.
with open(os.path.join(OUT, "legacy.pth"), "rb") as f:
    whole = f.read()
with open(os.path.join(OUT, "legacy_cut.pth"), "wb") as f:
    f.write(whole[:-3])  # the last storage loses its last bytes
write_error("legacy_cut", "truncated", "storage")

with open(os.path.join(OUT, "plain_pickle.pth"), "wb") as f:
    pickle.dump({"w": [1.0, 2.0]}, f, protocol=2)
write_error("plain_pickle", "not a torch.save file", "magic number")

with open(os.path.join(OUT, "text.pth"), "wb") as f:
    f.write(b"hello, not weights")
write_error("text", "not a torch.save file")

rezip(os.path.join(OUT, "small.pth"), os.path.join(OUT, "compressed.pth"), compress=zipfile.ZIP_DEFLATED)
write_error("compressed", "compressed")

rezip(os.path.join(OUT, "small.pth"), os.path.join(OUT, "bigendian.pth"), replace={"/byteorder": b"big"})
write_error("bigendian", "big-endian")

save("checkpoint", {"model": params, "epoch": 3})
write_error("checkpoint", "not all tensors", "`model`")

save("complex", {"c": torch.randn(2, dtype=torch.complex64)})
write_error("complex", "torch.ComplexFloatStorage")

save("list", [torch.ones(1)])
write_error("list", "not a dict")

print("fixtures written to", OUT)
for f in sorted(os.listdir(OUT)):
    print(f"  {os.path.getsize(os.path.join(OUT, f)):>11}  {f}")
