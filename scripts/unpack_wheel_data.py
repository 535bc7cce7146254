"""Extract the files under PREFIX of a wheel (a zip) into DEST, flat: unpack_wheel_data.py WHEEL PREFIX DEST."""

import sys
import zipfile
from pathlib import Path


def main(wheel: str, prefix: str, dest: str) -> None:
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                (out / Path(name).name).write_bytes(z.read(name))
                n += 1
    if n == 0:
        sys.exit(f"{wheel}: no files under {prefix}")
    print(f"{wheel}: {n} files -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
