"""The Rust data pipeline on real images (PyPI wheels' data, fetched by make setup), on a corpus of
bad files made here, and against independent references (PIL, numpy, torchvision)."""

import gzip
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet_rs
from alexnet_rs.data import DataLoader, load_image, transform_views

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "data"
BIN = ROOT / "target" / "release" / "alexnet"
from conftest import FASHION, needs_fashion


def pil_rgb(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).clone()


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "logo.png", "chessboard_GRAY.png",
                                  "chessboard_RGB.png", "no_time_for_that_tiny.gif", "multipage.tif"])
def test_lossless_formats_decode_like_pil(name):
    # PNG/GIF/TIFF, RGB, greyscale and RGBA (alpha dropped): pixel-equal to PIL's convert("RGB").
    path = CACHE / "skimage" / name
    ours = load_image(path)
    assert ours.dtype == torch.uint8 and ours.shape[2] == 3
    assert torch.equal(ours, pil_rgb(path))


@pytest.mark.parametrize("path", sorted((CACHE / "foolbox").glob("imagenet_0*.jpg"))[:5]
                         + [CACHE / "skimage" / "rocket.jpg", CACHE / "skimage" / "hubble_deep_field.jpg"],
                         ids=lambda p: p.name)
def test_jpegs_decode_close_to_pil(path):
    # Different IDCT/upsampling implementations: equal shape, a mean difference under 1 level.
    ours, ref = load_image(path), pil_rgb(path)
    assert ours.shape == ref.shape
    assert (ours.float() - ref.float()).abs().mean().item() < 1.0


def make_bad_corpus(d: Path):
    """The bad and odd files of the acceptance list, written with PIL and by hand."""
    src = CACHE / "foolbox" / "imagenet_00_243.jpg"
    jpeg = src.read_bytes()
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    # A well-formed PNG whose header claims 100000 x 100000 pixels (a few bytes of data).
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                 + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    img = Image.open(src).convert("RGB").resize((64, 48))
    img.convert("CMYK").save(d / "cmyk.jpg")
    img.convert("RGBA").save(d / "rgba.png")
    Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257)).save(d / "grey16.png")
    return {"bad": ["truncated.jpg", "empty.jpg", "text.jpg", "bomb.png"], "good": ["cmyk.jpg", "rgba.png", "grey16.png"]}


def test_bad_files_are_errors_naming_the_file(tmp_path):
    corpus = make_bad_corpus(tmp_path)
    for name in corpus["bad"]:
        with pytest.raises(alexnet_rs.DataError) as e:
            load_image(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")
    assert "over the limit" in str(pytest.raises(alexnet_rs.DataError, load_image, tmp_path / "bomb.png").value)


def test_a_jpeg_cut_anywhere_in_its_scan_is_refused(tmp_path):
    """The truncation check looked for the bytes FF D9 anywhere in the last 1 KiB: a file cut
    after a comment (or EXIF thumbnail) holding them decoded with grey rows. Cut at 25 points of
    the scan data, with such a comment in front, each file is refused, as PIL refuses it."""
    jpeg = (CACHE / "foolbox" / "imagenet_00_243.jpg").read_bytes()
    sos = jpeg.index(b"\xff\xda")
    marked = jpeg[:2] + b"\xff\xfe\x00\x08ab\xff\xd9cd" + jpeg[2:]
    scan = sos + 10 + 20  # past the comment and the scan header
    for cut in np.linspace(scan, len(marked) - 8, 25).astype(int):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(marked[:cut])
        with pytest.raises(OSError, match="truncated"):
            Image.open(path).load()
        with pytest.raises(alexnet_rs.DataError, match="truncated JPEG") as e:
            load_image(path)
        assert path.name in str(e.value)
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(marked)
    assert torch.equal(load_image(whole), load_image(CACHE / "foolbox" / "imagenet_00_243.jpg"))


def test_bytes_after_a_jpegs_end_are_ignored(tmp_path):
    """A motion photo (a video after the JPEG's end) or padding past 1 KiB was refused as a
    truncated JPEG; PIL reads it, and so do we, to the same pixels as without the trailer."""
    src = CACHE / "foolbox" / "imagenet_00_243.jpg"
    trailer = bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8))  # no 0xFF byte
    path = tmp_path / "motion.jpg"
    path.write_bytes(src.read_bytes() + trailer)
    assert torch.equal(pil_rgb(path), pil_rgb(src))
    assert torch.equal(load_image(path), load_image(src))


def test_a_resize_past_the_pixel_limit_is_an_error_not_an_abort():
    """transform_views(img, 100000, 32) asked for a 30 GB buffer and the process aborted; run in a
    subprocess so that a regression fails this test instead of ending the session."""
    import subprocess
    import sys

    script = """
import torch, alexnet_rs
try:
    alexnet_rs.data.transform_views(torch.zeros(28, 28, 3, dtype=torch.uint8), 100000, 32)
except alexnet_rs.AlexNetError as e:
    print(type(e).__name__, e)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ShapeError") and "100000x100000" in r.stdout and "limit" in r.stdout, r.stdout


def test_a_fifo_or_device_is_refused_unread(tmp_path):
    """/dev/zero was read until the OOM killer, a FIFO blocked forever: in a subprocess."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    script = f"""
import alexnet_rs
for path in ({str(fifo)!r}, "/dev/zero"):
    try:
        alexnet_rs.data.load_image(path)
    except alexnet_rs.DataError as e:
        print(e)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all("not a regular file" in line for line in lines), (r.stdout, r.stderr[-2000:])
    assert str(fifo) in lines[0] and "/dev/zero" in lines[1]


def test_odd_formats_become_rgb8(tmp_path):
    make_bad_corpus(tmp_path)
    for name in ["rgba.png", "grey16.png"]:
        ours = load_image(tmp_path / name)
        ref = np.asarray(Image.open(tmp_path / name).convert("RGB")) if name == "rgba.png" else None
        assert ours.shape == (48, 64, 3)
        if ref is not None:
            assert torch.equal(ours, torch.from_numpy(ref.copy()))
    grey = load_image(tmp_path / "grey16.png")
    ref8 = np.asarray(Image.open(tmp_path / "grey16.png")).astype(np.float64) / 257.0
    assert np.abs(grey[..., 0].numpy() - ref8).max() <= 1.0
    cmyk = load_image(tmp_path / "cmyk.jpg")
    rgb = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")).astype(np.float64)
    assert cmyk.shape == (48, 64, 3) and np.abs(cmyk.numpy() - rgb).mean() < 8.0



def test_a_tiff_variant_the_decoder_cannot_read_is_named_with_what_to_do(tmp_path):
    # A palette TIFF (PIL reads it) failed with the codec's bare "color type Unknown(..)".
    p = tmp_path / "palette.tif"
    Image.new("P", (8, 6), 3).save(p)
    assert np.asarray(Image.open(p).convert("RGB")).shape == (6, 8, 3)
    with pytest.raises(alexnet_rs.DataError, match=r"palette\.tif.*convert it to 8-bit RGB"):
        load_image(p)
    # A format this build leaves out is no "variant".
    Image.new("RGB", (16, 16)).save(tmp_path / "x.ico")
    with pytest.raises(alexnet_rs.DataError, match=r"x\.ico.*a format this build does not read: convert it to PNG"):
        load_image(tmp_path / "x.ico")

def folder_with_bad_files(tmp_path):
    """root/{a,b}/: 8 good JPEGs and, in a/, the 4 bad files."""
    root = tmp_path / "root"
    for cls in ["a", "b"]:
        (root / cls).mkdir(parents=True)
    for i, p in enumerate(sorted((CACHE / "foolbox").glob("imagenet_*.jpg"))[:8]):
        (root / "ab"[i % 2] / p.name).write_bytes(p.read_bytes())
    bad = tmp_path / "corpus"
    bad.mkdir()
    make_bad_corpus(bad)
    for name in ["truncated.jpg", "empty.jpg", "text.jpg", "bomb.png"]:
        (bad / name).rename(root / "a" / name)
    return root


def test_loader_skips_and_counts_bad_files(tmp_path):
    root = folder_with_bad_files(tmp_path)
    dl = DataLoader(root, crop=64, batch_size=5, threads=2)
    assert dl.classes == ["a", "b"] and dl.num_samples == 12
    it = dl.epoch(0)
    with pytest.warns(UserWarning, match="skipping bad image"):
        labels = torch.cat([y for _, y in it])
    assert len(labels) == 8 and it.skipped == 4


def test_skipped_files_are_python_warnings_naming_each_file(tmp_path, capfd):
    """The decoding threads printed "skipping bad image" to stderr, which a notebook cell does not
    show and warning filters cannot catch."""
    root = folder_with_bad_files(tmp_path)
    with pytest.warns(UserWarning) as caught:
        for _ in DataLoader(root, crop=64, batch_size=5, threads=2).epoch(0):
            pass
    named = sorted(str(w.message).split(": ")[1].split(":")[0] for w in caught)
    assert named == sorted(str(root / "a" / n) for n in ["bomb.png", "empty.jpg", "text.jpg", "truncated.jpg"])
    assert all(str(w.message).startswith("skipping bad image: ") and w.filename == __file__ for w in caught)
    assert "skipping" not in capfd.readouterr().err


def test_loader_fail_mode_names_the_file(tmp_path):
    root = folder_with_bad_files(tmp_path)
    dl = DataLoader(root, crop=64, batch_size=4, threads=2, on_bad_image="fail", shuffle=False)
    with pytest.raises(alexnet_rs.DataError, match=r"(truncated|empty|text|bomb)"):
        for _ in dl.epoch(0):
            pass


def test_same_batches_whatever_the_thread_count():
    data = CACHE / "foolbox"
    root = data.parent / "_twoclass"
    if not root.exists():
        for cls in ["x", "y"]:
            (root / cls).mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(sorted(data.glob("imagenet_*.jpg"))):
            (root / "xy"[i % 2] / p.name).write_bytes(p.read_bytes())
    runs = []
    for threads in (1, 2):
        dl = DataLoader(root, preset="paper", crop=96, batch_size=6, threads=threads, seed=7)
        runs.append([(x.clone(), y.clone()) for e in range(2) for x, y in dl.epoch(e)])
    assert len(runs[0]) == len(runs[1]) == 8
    for (x1, y1), (x2, y2) in zip(*runs):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # And a different epoch is a different shuffle and augmentation.
    assert not torch.equal(runs[0][0][0], runs[0][4][0])


def test_ten_crop_equals_torchvision():
    from torchvision.transforms import functional as TF
    from torchvision.transforms import TenCrop

    img = Image.open(CACHE / "foolbox" / "imagenet_03_21.jpg" if (CACHE / "foolbox" / "imagenet_03_21.jpg").exists()
                     else sorted((CACHE / "foolbox").glob("imagenet_*.jpg"))[3]).convert("RGB").resize((300, 257))
    arr = torch.from_numpy(np.asarray(img).copy())
    # resize = the shorter side: both sides crop the very same image.
    ours = transform_views(arr, 257, 224, "ten_crop")
    ref = torch.stack([TF.to_tensor(c) for c in TenCrop(224)(img)])
    assert ours.shape == ref.shape == (10, 3, 224, 224)
    assert torch.equal(ours, ref)


def test_center_crop_equals_torchvision():
    from torchvision.transforms import CenterCrop
    from torchvision.transforms import functional as TF

    for size in [(300, 257), (257, 300), (227, 227), (255, 260)]:
        img = Image.open(sorted((CACHE / "foolbox").glob("imagenet_*.jpg"))[0]).convert("RGB").resize(size)
        arr = torch.from_numpy(np.asarray(img).copy())
        ours = transform_views(arr, min(size), 224, "center")[0]
        assert torch.equal(ours, TF.to_tensor(CenterCrop(224)(img))), size


def test_train_views_are_crops_of_the_image_or_their_mirror():
    img = torch.from_numpy(np.asarray(Image.open(sorted((CACHE / "foolbox").glob("imagenet_*.jpg"))[1])
                                      .convert("RGB").resize((256, 256))).copy())
    ref = img.permute(2, 0, 1).float() / 255.0
    flips = 0
    for index in range(20):
        v = transform_views(img, 256, 224, "train", index=index)[0]
        found = False
        for cand in (v, v.flip(-1)):
            # locate by the first pixel row: exhaustive search over offsets
            for y in range(33):
                for x in range(33):
                    if torch.equal(ref[:, y:y + 224, x:x + 224], cand):
                        found = True
                        flips += cand is not v
                        break
                if found:
                    break
            if found:
                break
        assert found, index
    assert 0 < flips < 20  # both orientations occur


@needs_fashion
def test_fashion_mnist_idx_against_numpy():
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    dl = DataLoader(FASHION, split="test", preset="torchvision", crop=28, view="center", batch_size=1000,
                    shuffle=False, threads=2)
    assert dl.num_samples == 10000 and dl.classes[0] == "T-shirt/top"
    x, y = next(iter(dl))
    assert torch.equal(y, torch.from_numpy(labels[:1000].astype(np.int64)))
    # Greyscale repeated to 3 channels: undo torchvision's normalisation, channels agree.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    raw = x * std + mean
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)
    # Pixel for pixel: each sample is the transform (resize 32, centre crop 28) of the very image
    # numpy reads from the IDX bytes, so a flipped, transposed or shifted decode fails.
    for i in (0, 1, 2, 417, 999):
        rgb = torch.from_numpy(np.repeat(images[i][:, :, None], 3, axis=2).copy())
        ref = alexnet_rs.data.transform_views(rgb, resize=32, crop=28, view="center")[0]
        assert torch.allclose(raw[i], ref, atol=1e-6), i
        assert not torch.allclose(raw[i], ref.flip(-1), atol=1e-3) and not torch.allclose(raw[i], ref.transpose(-1, -2), atol=1e-3)


def test_list_file_source(tmp_path):
    files = sorted((CACHE / "foolbox").glob("imagenet_*.jpg"))[:4]
    lines = [f"{p} {i % 2}" for i, p in enumerate(files)]
    (tmp_path / "val.txt").write_text("# path label\n" + "\n".join(lines) + "\n")
    (tmp_path / "classes.txt").write_text("even\nodd\n")
    dl = DataLoader(tmp_path / "val.txt", crop=64, view="center", batch_size=4, shuffle=False)
    assert dl.classes == ["even", "odd"]
    _, y = next(iter(dl))
    assert y.tolist() == [0, 1, 0, 1]
    (tmp_path / "bad.txt").write_text(f"{files[0]} cat\n")
    with pytest.raises(alexnet_rs.DataError, match="line 1"):
        DataLoader(tmp_path / "bad.txt")
    # A huge label made 10^11 class names: the process aborted on the allocation.
    (tmp_path / "huge.txt").write_text(f"{files[0]} 0\n{files[1]} 99999999999\n")
    with pytest.raises(alexnet_rs.DataError, match="line 2: label 99999999999 is over the limit"):
        DataLoader(tmp_path / "huge.txt")
    # A byte order mark stayed in the first path ("missing"); a blank last line of classes.txt
    # was a class named "" (a 3-way network for 2 classes), a repeated name two classes.
    (tmp_path / "bom.txt").write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text("even\r\nodd\r\n\r\n")
    dl = DataLoader(tmp_path / "bom.txt", crop=64, view="center", batch_size=4, shuffle=False)
    assert dl.classes == ["even", "odd"] and next(iter(dl))[1].tolist() == [0, 1, 0, 1]
    (tmp_path / "classes.txt").write_text("even\nodd\neven\n")
    with pytest.raises(alexnet_rs.DataError, match="line 3: class `even` is named twice"):
        DataLoader(tmp_path / "val.txt")
    (tmp_path / "classes.txt").write_text("even\n\nodd\n")
    with pytest.raises(alexnet_rs.DataError, match="line 2: an empty class name"):
        DataLoader(tmp_path / "val.txt")
    # One file listed twice (here as `./name` too) trained one image under two labels, in silence.
    (tmp_path / "classes.txt").unlink()
    (tmp_path / files[0].name).write_bytes(files[0].read_bytes())
    (tmp_path / "dup.txt").write_text(f"{files[0].name} 0\n{files[1]} 1\n./{files[0].name} 1\n")
    with pytest.raises(alexnet_rs.DataError,
                       match=f"line 3: `./{files[0].name}` is listed again with another label .1; line 1: 0."):
        DataLoader(tmp_path / "dup.txt")
    (tmp_path / "dup.txt").write_text(f"{files[0].name} 0\n{files[1]} 1\n./{files[0].name} 0\n")
    assert DataLoader(tmp_path / "dup.txt").num_samples == 3  # oversampling: one label


def test_a_val_split_is_labelled_by_the_training_class_names(tmp_path):
    files = sorted((CACHE / "foolbox").glob("imagenet_*.jpg"))[:6]
    for split, classes in (("train", "abc"), ("val", "ac")):
        for i, c in enumerate(classes):
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / files[i].name).write_bytes(files[i].read_bytes())
    train = DataLoader(tmp_path, crop=64, batch_size=3, shuffle=False)
    # Without classes, train/ beside val/ names them: val/'s own folder order made "c" label 1,
    # which is "b" in training (a silent mislabelling of every image of "c").
    val = DataLoader(tmp_path, split="val", crop=64, view="center", batch_size=2, shuffle=False)
    assert val.classes == ["a", "b", "c"] and next(iter(val))[1].tolist() == [0, 2]
    val = DataLoader(tmp_path, split="val", crop=64, view="center", batch_size=2, shuffle=False,
                     classes=train.classes)
    assert val.classes == ["a", "b", "c"] and next(iter(val))[1].tolist() == [0, 2]
    with pytest.raises(alexnet_rs.DataError, match="class `c` is not one of the training classes"):
        DataLoader(tmp_path, split="val", classes=["a", "b"])
    (tmp_path / "val" / "d").mkdir()
    (tmp_path / "val" / "d" / files[5].name).write_bytes(files[5].read_bytes())
    with pytest.raises(alexnet_rs.DataError, match="class `d` is not one of the training classes"):
        DataLoader(tmp_path, split="val")
    val = DataLoader(tmp_path, split="val", crop=64, view="center", batch_size=3, shuffle=False,
                     classes=["a", "b", "c", "d"])  # given names win over train/'s
    assert next(iter(val))[1].tolist() == [0, 2, 3]


def test_a_test_split_of_the_training_images_is_said(tmp_path):
    """DataLoader(split="test") of a list file (or a folder without val/) gave its training images
    in silence: an evaluation on them reported training accuracy as test accuracy."""
    import warnings

    files = sorted((CACHE / "foolbox").glob("imagenet_*.jpg"))[:2]
    (tmp_path / "list.txt").write_text("".join(f"{f} {i}\n" for i, f in enumerate(files)))
    with pytest.warns(UserWarning, match="list.txt has no test split .a list file is one split.: its training images"):
        DataLoader(tmp_path / "list.txt", split="test", crop=64, batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DataLoader(tmp_path / "list.txt", split="train", crop=64, batch_size=1)
    # val/ and test/ both there: val/ is the test split, and that is said too.
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    (data / "test").mkdir()
    with pytest.warns(UserWarning, match="has both val/ and test/: val/ is the test split .test/ is not read."):
        DataLoader(data, split="test", crop=32, batch_size=1)


def test_images_beside_the_class_folders_are_said_to_be_left_out(tmp_path):
    """Image files directly in the folder of class folders belong to no class and were left out
    in silence (as torchvision's ImageFolder leaves them, also in silence)."""
    import shutil
    import warnings

    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    for split in ("train", "val"):
        shutil.copy(data / split / "class0" / "0.png", data / split / "stray.png")
    (data / "train" / "notes.txt").write_text("not an image")
    for split, folder in (("train", "train"), ("test", "val")):
        with pytest.warns(UserWarning, match=f"{folder}: 1 image file.s. lie beside the class folders, in no class"):
            loader = DataLoader(data, split=split, crop=32, batch_size=1)
        assert loader.num_samples == (64 if split == "train" else 16)
    # One folder of classes, no test split: said for the training split, not again for the test split.
    flat = data / "train"
    with pytest.warns(UserWarning, match="lie beside the class folders"):
        DataLoader(flat, split="train", crop=32, batch_size=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        DataLoader(flat, split="test", crop=32, batch_size=1)
    assert [str(w.message) for w in seen if "beside the class folders" in str(w.message)] == []
    # Without loose images: no warning.
    for split in ("train", "val"):
        (data / split / "stray.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DataLoader(data, split="train", crop=32, batch_size=1)


def test_prepare_is_resumable(tmp_path):
    src = folder_with_bad_files(tmp_path)
    out = subprocess.run([BIN, "prepare", src, tmp_path / "dst", "--size", "64"], capture_output=True, text=True)
    # The good files are written; the bad ones are listed and make the exit code 1.
    assert out.returncode == 1, out.stderr
    assert "8 written, 0 already there, 4 failed" in out.stdout
    assert "4 of 12 files could not be prepared" in out.stderr
    done = sorted(p.name for p in (tmp_path / "dst").rglob("*.jpg"))
    assert len(done) == 8 and min(Image.open(next((tmp_path / "dst").rglob("*.jpg"))).size) == 64
    again = subprocess.run([BIN, "prepare", src, tmp_path / "dst", "--size", "64"], capture_output=True, text=True)
    assert "0 written, 8 already there" in again.stdout


def test_stats_memory_is_one_mean_image_per_thread(tmp_path):
    """Each of rayon's fold splits held its own f64 mean image (3 x side² x 8 bytes, 100 MB at
    side 2048): 16 images with 2 threads took 900 MB more at side 2048 than at side 8. The bound:
    one accumulator per thread, the merged one and the result (f32), 350 MB, with 50 MB of slack."""
    (tmp_path / "c0").mkdir()
    for i in range(16):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "c0" / f"{i}.png")
    script = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
assert r.returncode == 0, r.stderr[-2000:]
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""
    rss = {}
    for side in (8, 2048):
        cmd = [BIN, "stats", tmp_path, "--size", str(side), "--threads", "2", "--out", tmp_path / f"s{side}.safetensors"]
        r = subprocess.run([sys.executable, "-c", script, *map(str, cmd)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        rss[side] = int(r.stdout)
    accumulator = 3 * 2048 ** 2 * 8
    assert rss[2048] - rss[8] < 3 * accumulator + accumulator // 2 + 50e6, rss


def test_stats_against_numpy(tmp_path):
    # 32x32 images need no resizing at --size 32, so numpy sees exactly the pixels we do.
    rng = np.random.default_rng(0)
    (tmp_path / "c").mkdir()
    arrays = []
    for i in range(6):
        a = (rng.random((32, 32, 3)) * np.array([255, 120, 60])).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / "c" / f"{i}.png")
        arrays.append(a.astype(np.float64) / 255.0)
    out = tmp_path / "stats.safetensors"
    r = subprocess.run([BIN, "stats", tmp_path, "--size", "32", "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    s = load_file(out)
    px = np.concatenate([a.reshape(-1, 3) for a in arrays])
    np.testing.assert_allclose(s["channel_mean"].numpy(), px.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s["mean_image"].numpy(), np.mean(arrays, 0).transpose(2, 0, 1), atol=1e-6)
    w, v = np.linalg.eigh(np.cov(px.T, bias=True))
    np.testing.assert_allclose(s["eigval"].numpy(), w[::-1], rtol=1e-4)
    for i in range(3):  # eigenvectors up to sign
        assert abs(abs(float(np.dot(s["eigvec"].numpy()[:, i], v[:, ::-1][:, i]))) - 1) < 1e-4
    # A side of 0 is refused (it wrote NaN statistics and exited 0); the good file stays.
    bad = subprocess.run([BIN, "stats", tmp_path, "--size", "0", "--out", out], capture_output=True, text=True)
    assert bad.returncode == 2 and "0 is not in 1..=8192" in bad.stderr, bad.stderr
    # A bad image is skipped and named (it was only counted), as the training loader names it.
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png")
    r = subprocess.run([BIN, "stats", tmp_path, "--size", "32", "--out", tmp_path / "s2.safetensors"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and f"skipping bad image: {tmp_path / 'c' / 'broken.png'}" in r.stderr, r.stderr
    assert "6 images (1 unreadable, skipped)" in r.stdout, r.stdout
    # A side past the pipeline's limit aborted on a 240 GB allocation.
    huge = subprocess.run([BIN, "stats", tmp_path, "--size", "100000", "--out", out], capture_output=True, text=True)
    assert huge.returncode == 2 and "100000 is not in 1..=8192" in huge.stderr, huge.stderr
    assert load_file(out)["channel_mean"].isfinite().all()
    # The torchvision preset does not use a stats file: the CLI said so, the Python loader did not.
    with pytest.warns(UserWarning, match=r"torchvision preset .* the stats file \(--stats\) is not used") as w:
        alexnet_rs.data.DataLoader(tmp_path, preset="torchvision", crop=32, stats=out, threads=1)
    assert w[0].filename == __file__
    with pytest.warns(UserWarning, match=r"mean image is 32x32, but inputs of 63 are resized to 72"):
        alexnet_rs.data.DataLoader(tmp_path, preset="paper", crop=63, stats=out, threads=1)
    # ImageNet's widely copied 0-255 eigenvalues made the lighting noise ~255x too strong, in
    # silence; eigenvectors that are not orthonormal are no PCA either.
    from safetensors.torch import save_file

    for key, value, why in (("eigval", torch.tensor([55.46, 4.794, 1.148]), r"0-255 units\?"),
                            ("eigvec", torch.eye(3) * 2, "not orthonormal")):
        save_file({**load_file(out), key: value}, tmp_path / "bad.safetensors")
        with pytest.raises(alexnet_rs.DataError, match=f"bad.safetensors.*{why}"):
            alexnet_rs.data.DataLoader(tmp_path, preset="paper", crop=32, stats=tmp_path / "bad.safetensors")


def test_ranks_partition_each_epoch_and_an_empty_epoch_warns(tmp_path):
    """With rank/world_size the shards of a global batch do not overlap and cover it; 15 images in
    global batches of 5 x 4 ranks make no batch at all: that used to yield nothing in silence."""
    from conftest import image_folder

    from alexnet_rs.data import DataLoader

    data = image_folder(tmp_path / "d")  # 64 training images
    seen = []
    for rank in range(2):
        loader = DataLoader(data, crop=16, batch_size=8, threads=1, rank=rank, world_size=2, view="center")
        assert len(loader) == 4
        seen += [tuple(x.flatten()[:16].tolist()) for images, _ in loader for x in images]
    assert len(seen) == len(set(seen)) == 64  # 4 global batches of 16: every image once, on one rank
    few = tmp_path / "few"
    for c in range(3):
        (few / f"c{c}").mkdir(parents=True)
        for i in range(5):
            (few / f"c{c}" / f"{i}.png").write_bytes((data / "train" / "class0" / f"{i}.png").read_bytes())
    with pytest.warns(UserWarning, match=r"its 15 samples make no full global batch of 5 x 4 ranks: every epoch is empty"):
        loader = DataLoader(few, crop=16, batch_size=5, threads=1, rank=0, world_size=4)
    assert len(loader) == 0 and list(loader) == []


def test_evaluation_shards_cover_every_sample_once(tmp_path):
    """An evaluation view's shards split the last, incomplete global batch as far as it goes (the
    Rust evaluation's loader does): they dropped it, and drop_last=False did not bring it back,
    so a sharded evaluation left out up to world_size * batch_size - 1 images in silence."""
    from conftest import image_folder

    from alexnet_rs.data import DataLoader

    data = image_folder(tmp_path / "d")  # 64 training images: 4 global batches of 15, then 4
    for view in ("center", "ten_crop"):
        seen, lens = [], []
        for rank in range(3):
            loader = DataLoader(data, crop=16, batch_size=5, threads=1, rank=rank, world_size=3, view=view,
                                shuffle=False)
            batches = [images for images, _ in loader]
            lens.append([len(b) for b in batches])
            assert len(loader) == len(batches)
            crops = 10 if view == "ten_crop" else 1
            seen += [tuple(x.flatten()[:16].tolist()) for b in batches for x in b[::crops]]
        assert len(seen) == len(set(seen)) == 64, view
        crops = 10 if view == "ten_crop" else 1
        assert lens == [[5 * crops] * 4 + [4 * crops], [5 * crops] * 4, [5 * crops] * 4], view
    # Training shards: the same number of full batches on every rank (the tail is dropped).
    assert [len(DataLoader(data, crop=16, batch_size=5, threads=1, rank=r, world_size=3)) for r in range(3)] == [4] * 3
    # A rank the 12 samples do not reach is told so (it was "its 12 samples make no full batch").
    few = DataLoader(data, crop=16, batch_size=5, threads=1, view="center", limit=12, rank=2, world_size=5)
    assert len(few) == 1
    with pytest.warns(UserWarning, match=r"rank 3 of 5 gets none of the 12 samples \(an evaluation view's shards"):
        assert list(DataLoader(data, crop=16, batch_size=5, threads=1, view="center", limit=12, rank=3,
                               world_size=5)) == []


def test_a_shard_of_one_keeps_the_place_of_a_batch_of_only_bad_images(tmp_path):
    """Given rank/world_size, even a world of 1, the loader is a shard as the Rust training loop's
    is: a batch whose images were all bad comes empty in its place (a loop's learning rate
    depends on its place in the epoch); without them such a batch is left out. Same order, same
    batches otherwise."""
    from conftest import image_folder

    from alexnet_rs.data import DataLoader

    data = image_folder(tmp_path / "d")  # 64 training images
    for i, f in enumerate(sorted((data / "train").rglob("*.png"))):
        if i % 4:
            f.write_bytes(b"")  # 16 readable
    common = dict(crop=16, batch_size=2, threads=1, shuffle=True, drop_last=True, seed=1, view="train")
    plain = [labels.tolist() for _, labels in DataLoader(data, **common)]
    shard = [labels.tolist() for _, labels in DataLoader(data, rank=0, world_size=1, **common)]
    assert len(shard) == 32 and [] in shard
    assert [b for b in shard if b] == plain


def test_an_epoch_read_by_two_threads_is_a_clear_error(tmp_path):
    """next() releases the GIL while it assembles a batch; a second thread's next() on the same
    epoch then raised pyo3's bare "RuntimeError: Already mutably borrowed". It is a ConfigError
    naming the cure, and the first thread's batch is unharmed. (The overlap is arranged by
    timing: a batch of 12 noise PNGs of 768x768 takes ~0.2 s to decode on one thread, and the
    second call comes 10 ms after the first started; of 3 tries at least one must overlap.)"""
    import threading
    import time

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (768, 768, 3), dtype=np.uint8)).save(tmp_path / "train" / f"c{c}" / f"{i}.png")
    overlaps = 0
    for _ in range(3):
        it = iter(DataLoader(tmp_path, crop=32, batch_size=12, threads=1, view="center"))
        got, started = {}, threading.Event()

        def first():
            started.set()
            got["batch"] = next(it)

        t = threading.Thread(target=first)
        t.start()
        started.wait()
        time.sleep(0.01)
        try:
            next(it)
        except StopIteration:
            pass  # the first thread was already done: no overlap this time
        except alexnet_rs.ConfigError as e:
            assert "another thread" in str(e)
            overlaps += 1
        # iter(), len() and .skipped meanwhile: the same error, or their answer (pyo3's bare
        # "Already mutably borrowed" RuntimeError was raised).
        for peek in (iter, len, lambda e: e.skipped):
            try:
                peek(it)
            except alexnet_rs.ConfigError as e:
                assert "another thread" in str(e)
        t.join()
        images, labels = got["batch"]
        assert images.shape == (12, 3, 32, 32) and sorted(labels.tolist()) == [0] * 6 + [1] * 6
    assert overlaps >= 1


def _fork_child(loader, epoch, queue):
    try:
        if epoch is None:
            queue.put(("ok", [(x.numpy(), y.numpy()) for x, y in loader.epoch(1)]))  # by value
        else:
            queue.put(("ok", [next(epoch)]))
    except Exception as e:  # noqa: BLE001 - the child reports what it got
        queue.put((type(e).__name__, str(e)))


@pytest.mark.parametrize("started", [False, True], ids=["loader", "epoch-in-progress"])
def test_a_loader_works_in_a_forked_child(tmp_path, started):
    """A DataLoader made before fork() (a torch DataLoader's fork-started worker, a
    multiprocessing pool) waited forever in the child, deaf to Ctrl-C: the child's copy of the
    decoding pool has no threads. The child builds its own and gives the parent's batches; an
    epoch started in the parent is an error in the child, not a hang."""
    import multiprocessing

    from conftest import image_folder

    root = image_folder(tmp_path / "data")
    loader = DataLoader(root, crop=16, batch_size=8, threads=2, seed=3)
    parent = [(x, y) for x, y in loader.epoch(1)]
    epoch = loader.epoch(0) if started else None
    if epoch is not None:
        next(epoch)  # its producer is mid-epoch (prefetching) at the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fork_child, args=(loader, epoch, queue))
    child.start()
    try:
        kind, got = queue.get(timeout=60)  # before join: the child's exit waits for this read
    except Exception:  # queue.Empty
        child.kill()
        raise AssertionError("the child waited forever for a batch") from None
    child.join(60)
    if started:
        assert kind == "ConfigError" and "started in another process" in got, (kind, got)
    else:
        assert kind == "ok", (kind, got)
        assert len(got) == len(parent) == 8
        for (x, y), (px, py) in zip(got, parent):
            assert torch.equal(torch.from_numpy(x), px) and torch.equal(torch.from_numpy(y), py)
    if epoch is not None:
        assert len(list(epoch)) == 7  # the parent's epoch goes on
