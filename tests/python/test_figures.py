"""The pictures of a trained run, from the CLI and Python: the paper's Fig. 3 (`alexnet filters`,
`alexnet_rs.viz.filters`), Fig. 4 (`alexnet neighbours`: fc7 nearest neighbours, cached) and the
confusion matrix of `alexnet eval --confusion`, each checked against a computation of its own."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import alexnet_rs
from conftest import image_folder

BIN = Path(__file__).resolve().parents[2] / "target" / "release" / "alexnet"


def cli(*args):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A `paper` run at 63 on a small two-class image folder (3 steps)."""
    root = tmp_path_factory.mktemp("figures")
    data = image_folder(root / "data")
    out = root / "run"
    cli("train", "--preset", "paper", "--input-size", "63", "--torch-init", "--data", data, "--epochs", "1",
        "--batch-size", "8", "--max-steps", "3", "--threads", "1", "--out", out)
    return out, data


def test_filters_draw_each_kernel_scaled_on_its_own_in_two_towers(run, tmp_path):
    out, _ = run
    r = cli("filters", out, "--out", tmp_path / "conv1.png")
    assert "tower 1: kernels 1-48" in r.stdout and "tower 2: kernels 49-96" in r.stdout
    assert Image.open(tmp_path / "conv1.png").size[0] > 300
    model = alexnet_rs.AlexNet.load_checkpoint(out)
    grid = alexnet_rs.viz.filters(model)
    w = model.state_dict()["conv1.weight"].numpy()  # (96, 3, 11, 11)
    # Tile i of tower t: 8 per row, 11x11 taps of 4x4 pixels, 2-pixel gaps, a 22-pixel label band.
    for i in (0, 9, 47, 48, 95):
        t, j = divmod(i, 48)
        block = 22 + 6 * 46 + 2
        y0, x0 = t * block + 22 + (j // 8) * 46, 2 + (j % 8) * 46
        tile = grid[y0:y0 + 44:4, x0:x0 + 44:4]  # one pixel per tap
        k = w[i].transpose(1, 2, 0)
        want = np.round((k - k.min()) / (k.max() - k.min()) * 255)
        assert np.abs(tile.astype(float) - want).max() <= 1, i
    towers = alexnet_rs.viz.filter_towers(model)
    assert [(t["first"], t["count"]) for t in towers] == [(0, 48), (48, 48)]
    spread = [float(s) for s in re.findall(r"colour spread ([0-9.]+)", r.stdout)]
    assert spread == pytest.approx([t["colour_spread"] for t in towers], abs=1e-3)
    # A kernel that is the same in R, G and B has no colour spread.
    grey = torch.zeros(96, 3, 11, 11) + torch.randn(96, 1, 11, 11)
    _, _, _, stats = alexnet_rs._native.filter_grid("paper", grey)
    assert all(s < 1e-6 for _, _, s in stats)
    # Nothing to draw: zero kernels gave an empty grid and a NaN spread; NaN kernels a plain colour
    # read as colour-agnostic.
    with pytest.raises(alexnet_rs.ShapeError, match="no kernel to draw"):
        alexnet_rs._native.filter_grid("paper", torch.zeros(0, 3, 11, 11))
    model.state_dict()["conv1.weight"][3, 1, 2, 2] = float("inf")
    with pytest.raises(alexnet_rs.DataError, match="conv1.weight holds NaN or infinite values"):
        alexnet_rs.viz.filters(model)


def test_filters_of_an_ablation_run_folder(run, tmp_path):
    """viz.filters(path) went through AlexNet.load_checkpoint, which refuses a network that is not
    its preset's: half the arms of `alexnet experiment` (--no-lrn, --activation tanh) drew nothing."""
    _, data = run
    out = tmp_path / "nolrn"
    cli("train", "--preset", "paper", "--input-size", "63", "--no-lrn", "--data", data, "--epochs", "1",
        "--batch-size", "8", "--max-steps", "1", "--threads", "1", "--out", out)
    with pytest.raises(alexnet_rs.ConfigError, match="not the paper preset's network"):
        alexnet_rs.AlexNet.load_checkpoint(out)
    w = load_file(next((out / "checkpoints").glob("ckpt-*")) / "weights.safetensors")["conv1.weight"]
    data_, height, width, _ = alexnet_rs._native.filter_grid("paper", w)
    want = np.frombuffer(data_, dtype=np.uint8).reshape(height, width, 3)
    assert np.array_equal(alexnet_rs.viz.filters(out), want)
    assert [(t["first"], t["count"]) for t in alexnet_rs.viz.filter_towers(str(out))] == [(0, 48), (48, 48)]


def test_confusion_matrix_and_per_class_accuracy(run, tmp_path):
    out, _ = run
    r = cli("eval", out, "--confusion", tmp_path / "new" / "c.png")  # the folder is created
    n, top1 = re.search(r"(\d+) samples \(centre crop\): top-1 ([0-9.]+)", r.stdout).groups()
    per_class = [float(a) for a in re.findall(r"^\s+([0-9.]+)\s+class\d", r.stdout, re.M)]
    assert len(per_class) == 2
    # The val split has 8 images per class: the mean of the per-class accuracies is top-1.
    assert int(n) == 16 and np.mean(per_class) == pytest.approx(float(top1), abs=1e-4)
    assert Image.open(tmp_path / "new" / "c.png").size[0] > 100
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["c.png"]  # no temporary file left


def test_eval_labels_a_test_folder_by_the_checkpoints_class_names(run, tmp_path):
    # A val/ holding only class1 has one class, `class1`: by position its images were label 0.
    out, data = run
    shutil.copytree(data / "val" / "class1", tmp_path / "d" / "val" / "class1")
    r = cli("eval", out, "--data", tmp_path / "d", "--confusion", tmp_path / "c.png")
    n, top1 = re.search(r"(\d+) samples \(centre crop\): top-1 ([0-9.]+)", r.stdout).groups()
    model = alexnet_rs.AlexNet.load_checkpoint(out).eval()
    loader = alexnet_rs.data.DataLoader(data, split="val", preset="paper", crop=63, view="center",
                                        batch_size=16, threads=1, shuffle=False)
    images, labels = next(iter(loader))
    with torch.no_grad():
        predicted = model(images[labels == 1]).argmax(-1)
    assert int(n) == 8 and float(top1) == pytest.approx((predicted == 1).float().mean().item(), abs=1e-4)
    per_class = re.findall(r"^\s+([0-9.]+|-)\s+(class\d)", r.stdout, re.M)
    assert [c for _, c in per_class] == ["class0", "class1"] and per_class[0][0] == "-", r.stdout
    assert "class0 (no test samples)" in r.stdout, r.stdout
    # A class the network does not know is refused by name; a folder without val/ is not evaluated.
    shutil.copytree(data / "val" / "class1", tmp_path / "d" / "val" / "class7")
    r = subprocess.run([BIN, "eval", out, "--data", tmp_path / "d"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "class `class7` is not one of the training classes" in r.stderr, r.stderr
    r = subprocess.run([BIN, "eval", out, "--data", data / "train"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr  # a folder of class folders is itself a split
    shutil.copytree(data / "train", tmp_path / "t" / "train")
    r = subprocess.run([BIN, "eval", out, "--data", tmp_path / "t"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "has train/ but no val/ or test/ folder" in r.stderr, r.stderr


def test_a_bad_query_fails_before_the_training_set_is_read(run, tmp_path):
    out, _ = run
    shutil.rmtree(out / "fc7", ignore_errors=True)
    (tmp_path / "query.png").write_bytes(b"not a png")
    r = subprocess.run([BIN, "neighbours", out, tmp_path / "query.png", "--out", tmp_path / "sheet.png"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "query.png" in r.stderr, r.stderr
    assert "computing the fc7 vectors" not in r.stderr and not (out / "fc7").exists()


def test_neighbours_are_the_nearest_fc7_vectors_and_are_cached(run, tmp_path):
    out, data = run
    query = sorted((data / "val" / "class1").glob("*.png"))[0]
    r = cli("neighbours", out, query, "--k", "3", "--out", tmp_path / "sheet.png")
    assert "computing the fc7 vectors of 64 training images" in r.stderr
    cache = next((out / "fc7").glob("*.safetensors"))
    bank = load_file(cache)["fc7"]
    # The same vectors from Python: the training images through the loader's centre view.
    model = alexnet_rs.AlexNet.load_checkpoint(out).eval()
    loader = alexnet_rs.data.DataLoader(data, split="train", preset="paper", crop=63, view="center",
                                        batch_size=64, threads=1, shuffle=False)
    images, labels = next(iter(loader))
    with torch.no_grad():
        fc7 = model.features(images, "fc7")["fc7"]
    assert ((bank - fc7).abs().max() / fc7.abs().max()).item() <= 1e-5
    names = re.search(r"nearest: (.*)", r.stdout).group(1).split(", ")
    assert len(names) == 3 and Image.open(tmp_path / "sheet.png").size[1] >= 64
    again = cli("neighbours", out, query, "--k", "3", "--out", tmp_path / "sheet2.png")
    assert "computing" not in again.stderr and again.stdout == r.stdout.replace("sheet.png", "sheet2.png")
    # The cache of a checkpoint --keep has removed is removed (1 GB each on Fashion-MNIST); other
    # files, and the caches of checkpoints still there, stay.
    # A user's file named like three dashed parts was taken for a cache and deleted.
    stale = out / "fc7" / "ckpt-000000001-0123456789abcdef-0123456789abcdef.safetensors"
    stale.write_bytes(cache.read_bytes())
    (out / "fc7" / "notes.txt").write_text("mine")
    (out / "fc7" / "resnet-layer4-features.safetensors").write_text("mine")
    cli("neighbours", out, query, "--k", "3", "--out", tmp_path / "sheet3.png")
    assert sorted(p.name for p in (out / "fc7").iterdir()) == sorted(
        [cache.name, "notes.txt", "resnet-layer4-features.safetensors"])


def test_predict_is_the_models_softmax_and_a_bad_file_does_not_stop_the_others(run, tmp_path):
    out, data = run
    queries = [data / "val" / "class0" / "0.png", tmp_path / "bad.png", data / "val" / "class1" / "0.png"]
    queries[1].write_bytes(b"not a png")
    empty = tmp_path / "no-images"  # an empty folder among the arguments stopped the whole call
    empty.mkdir()
    r = subprocess.run([BIN, "predict", out, *queries, empty], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    assert f"error: {queries[1]}: not a recognised image format" in r.stderr, r.stderr
    assert f"error: {empty}: no image files in this folder" in r.stderr, r.stderr
    assert "\nerror: 2 of 4 images could not be read" in r.stderr, r.stderr
    printed: dict[str, dict[int, float]] = {}
    for line in r.stdout.splitlines():
        if not line.startswith(" "):
            top = printed.setdefault(line.rstrip(":").split("/val/")[-1], {})
        else:
            p, i, _ = line.split()
            top[int(i)] = float(p)
    assert list(printed) == ["class0/0.png", "class1/0.png"], r.stdout
    # The same images through the loader's centre view and the model loaded in Python.
    model = alexnet_rs.AlexNet.load_checkpoint(out).eval()
    loader = alexnet_rs.data.DataLoader(data, split="val", preset="paper", crop=63, view="center",
                                        batch_size=16, threads=1, shuffle=False)
    images, labels = next(iter(loader))
    assert labels[[0, 8]].tolist() == [0, 1]
    with torch.no_grad():
        probs = model(images[[0, 8]]).softmax(-1)
    for row, name in zip(probs, printed):
        assert printed[name] == pytest.approx(dict(enumerate(row.tolist())), abs=6e-5)
    # A folder stands for its images, sorted.
    r = cli("predict", out, data / "val" / "class0")
    heads = [line for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert heads == [f"{data / 'val' / 'class0' / n}:" for n in sorted(f"{i}.png" for i in range(8))]
    r = subprocess.run([BIN, "predict", out, tmp_path], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "no image files in this folder" not in r.stderr  # bad.png is one
    (tmp_path / "empty").mkdir()
    r = subprocess.run([BIN, "predict", out, tmp_path / "empty"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "empty: no image files in this folder" in r.stderr, r.stderr


def test_neighbours_chance_is_that_of_the_searched_sets_classes(tmp_path):
    """The chance rate of a neighbour sharing the query's class was 1 / classes whatever the
    training set; it is the share of the query's class among the searched images (here every
    query is of class1, 16 of the 48 training images)."""
    data = image_folder(tmp_path / "data")
    for f in sorted((data / "train" / "class1").glob("*.png"))[16:]:
        f.unlink()
    shutil.rmtree(data / "val" / "class0")
    cli("train", "--preset", "torchvision", "--input-size", "63", "--data", data, "--batch-size", "8",
        "--max-steps", "1", "--threads", "1", "--out", tmp_path / "run")
    r = cli("neighbours", tmp_path / "run", "--test", "4", "--k", "5", "--out", tmp_path / "n.png")
    assert re.search(r"sharing the query's class: \d+ of 20 \([0-9.]+%; chance: 33\.3%\)", r.stdout), r.stdout


def test_neighbours_of_a_network_without_fc7_is_a_clear_error(tmp_path):
    # cnn4 (Fig. 1's network) has one fully connected layer: `neighbours` indexed past its list.
    data = image_folder(tmp_path / "data")
    cli("train", "--preset", "cnn4", "--input-size", "28", "--data", data, "--batch-size", "16", "--max-steps", "1",
        "--out", tmp_path / "run")
    r = subprocess.run([BIN, "neighbours", tmp_path / "run", "--test", "2", "--out", tmp_path / "n.png"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "the cnn4 network has none" in r.stderr, r.stderr


def test_the_contact_sheet_shows_the_first_100_queries_and_k_is_bounded(run, tmp_path):
    # `--test 150` drew a 150-row sheet, and `--k` had no bound: a large N or k asked for an
    # image of any size (and overflowed its u32 width). The statistic still covers every query.
    out, _ = run
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    for split, n in (("train", 2), ("val", 75)):
        for c in range(2):
            (data / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    data / split / f"class{c}" / f"{i}.png")
    r = cli("neighbours", out, "--test", "150", "--k", "2", "--data", data, "--out", tmp_path / "sheet.png")
    assert "of 300 (" in r.stdout and "the first 100 of 150 queries" in r.stdout, r.stdout
    assert Image.open(tmp_path / "sheet.png").size[1] == 100 * (64 + 8)
    assert "note:" not in r.stderr
    # The queries go through the network in batches (all at once took tens of GB at 224): a query
    # has the same classes and neighbours whatever batch it falls in (here 64-69 are the second
    # batch of 6 queries, there of 64).
    per_query = lambda text: [ln for ln in text.splitlines() if ln.startswith("test #")]  # noqa: E731
    few = cli("neighbours", out, "--test", "70", "--k", "2", "--data", data, "--out", tmp_path / "few.png")
    assert per_query(few.stdout) == per_query(r.stdout)[:70] and len(per_query(few.stdout)) == 70
    r = cli("neighbours", out, "--test", "200", "--k", "2", "--data", data, "--out", tmp_path / "sheet.png")
    assert "note: --test 200, but the test split has 150 images: querying them all" in r.stderr, r.stderr
    r = subprocess.run([BIN, "neighbours", out, "--test", "2", "--k", "101", "--out", tmp_path / "n.png"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "--k must be between 1 and 100 (got 101)" in r.stderr, r.stderr


def test_an_output_under_a_file_names_the_file(run, tmp_path):
    # `--out file/x.png` said only "File exists (os error 17)".
    out, _ = run
    (tmp_path / "file").write_text("")
    r = subprocess.run([BIN, "filters", out, "--out", tmp_path / "file" / "sub" / "x.png"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    assert f"{tmp_path / 'file'}: is a file, not a folder (needed for {tmp_path / 'file' / 'sub' / 'x.png'})" in r.stderr


def test_a_figure_cut_short_by_a_full_disk_leaves_the_old_one(run, tmp_path):
    """The image crate's save_with_format writes a PNG's last bytes (the IDAT CRC, IEND) when its
    buffer is dropped, where a failure is lost: on a full disk `alexnet filters` said it wrote the
    figure and renamed a truncated PNG over the good one. (A file-size limit stands in for the
    full disk: a write past it fails with EFBIG.)"""
    import resource
    import signal

    out, _ = run
    fig = tmp_path / "conv1.png"
    cli("filters", out, "--out", fig)
    good = fig.read_bytes()

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(good) - 8, resource.RLIM_INFINITY))

    r = subprocess.run([BIN, "filters", out, "--out", fig], capture_output=True, text=True, timeout=600,
                       preexec_fn=limited)
    assert r.returncode == 1 and "File too large" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert fig.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv1.png"]


def test_a_bad_figure_path_fails_before_the_work_naming_the_culprit(run, tmp_path):
    """eval --confusion, filters --out and neighbours --out check where the figure goes first (a whole
    evaluation ran before `afile/x.png` failed), and a folder given as the figure is said to be one
    (it was "The image format could not be determined")."""
    out, _ = run
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    for args in (["eval", out, "--confusion"], ["filters", out, "--out"], ["neighbours", out, "--test", "1", "--out"]):
        for target, needle in [(tmp_path / "afile" / "x.png", f"{tmp_path / 'afile'}: is a file, not a folder"),
                               (tmp_path / "adir", f"{tmp_path / 'adir'}: is a folder"),
                               (tmp_path / "x.pngg", "name it .png")]:
            r = subprocess.run([BIN, *args, target], capture_output=True, text=True, timeout=600)
            assert r.returncode == 1 and needle in r.stderr, (args, r.stderr)
            assert r.stdout == "" and "computing" not in r.stderr, (args, r.stdout, r.stderr)


def test_neighbours_search_the_subset_the_run_trained_on(tmp_path):
    # A run of --limit-train 20 searched its data's whole training split (Fashion-MNIST: 60,000
    # images) for neighbours; a given --data is searched whole.
    data = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    cli("train", "--preset", "paper", "--input-size", "63", "--torch-init", "--data", data, "--batch-size", "8",
        "--max-steps", "1", "--limit-train", "20", "--threads", "1", "--out", run)
    r = cli("neighbours", run, "--test", "2", "--k", "3", "--out", tmp_path / "n.png")
    assert "computing the fc7 vectors of 20 training images" in r.stderr, r.stderr
    r = cli("neighbours", run, "--test", "2", "--k", "3", "--data", data, "--out", tmp_path / "n.png")
    assert "computing the fc7 vectors of 64 training images" in r.stderr, r.stderr


def test_the_fc7_cache_is_not_reused_after_the_training_images_change(tmp_path):
    """The cache is keyed by the samples themselves (names, labels, sizes, modification times): an
    image moved to another class, or replaced by another, in a data set of the same size is
    computed again, never answered with the old vectors under the new labels."""
    data = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    cli("train", "--preset", "paper", "--input-size", "63", "--torch-init", "--data", data, "--batch-size", "8",
        "--max-steps", "1", "--threads", "1", "--out", run)
    query = sorted((data / "val" / "class1").glob("*.png"))[0]

    def neighbours():
        return cli("neighbours", run, query, "--k", "3", "--data", data, "--out", tmp_path / "n.png")

    assert "computing the fc7 vectors of 64 training images" in neighbours().stderr
    assert "computing" not in neighbours().stderr  # unchanged: reused
    # Moved to the other class: as many images as before.
    (data / "train" / "class0" / "0.png").rename(data / "train" / "class1" / "moved.png")
    assert "computing the fc7 vectors of 64 training images" in neighbours().stderr
    # Replaced by other pixels under the same name.
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(data / "train" / "class1" / "moved.png")
    assert "computing the fc7 vectors of 64 training images" in neighbours().stderr
    assert "computing" not in neighbours().stderr
    # Another run trained into the same folder: a checkpoint of the same step, other weights (the
    # old run's vectors were reused).
    shutil.rmtree(run / "checkpoints")
    cli("train", "--preset", "paper", "--input-size", "63", "--torch-init", "--data", data, "--batch-size", "8",
        "--max-steps", "1", "--threads", "1", "--seed", "5", "--out", run)
    assert "computing the fc7 vectors of 64 training images" in neighbours().stderr
    assert len(list((run / "fc7").iterdir())) == 1  # the old weights' vectors went
    # A checkpoint folder outside a run's checkpoints/: its cache is kept beside it and reused (it
    # was written to the grandparent folder and removed by the next call).
    loose = tmp_path / "kept" / "mine"
    loose.parent.mkdir()
    shutil.copytree(next((run / "checkpoints").iterdir()), loose)
    r = cli("neighbours", loose, query, "--k", "3", "--data", data, "--out", tmp_path / "n.png")
    assert "computing" in r.stderr
    r = cli("neighbours", loose, query, "--k", "3", "--data", data, "--out", tmp_path / "n.png")
    assert "computing" not in r.stderr, r.stderr


def test_neighbours_skip_unreadable_training_and_query_images(tmp_path):
    """A run whose data holds an unreadable image (training skipped it, as documented) got
    "configuration error: 1 of 64 training images could not be read: fc7 needs them all", and
    one bad query (or --test image) stopped all the others."""
    data = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    cli("train", "--preset", "paper", "--input-size", "63", "--torch-init", "--data", data, "--batch-size", "8",
        "--max-steps", "1", "--threads", "1", "--out", run)
    bad_train = data / "train" / "class0" / "0.png"
    bad_train.write_bytes(b"")
    (data / "val" / "class0" / "0.png").write_bytes(b"")  # test #0
    bad_query = tmp_path / "bad.png"
    bad_query.write_bytes(b"not a png")
    good = data / "val" / "class1" / "0.png"
    r = subprocess.run([BIN, "neighbours", run, bad_query, good, "--k", "3", "--data", data, "--out",
                        tmp_path / "n.png"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    assert f"skipping bad image: {bad_train}" in r.stderr and f"error: {bad_query}" in r.stderr, r.stderr
    assert "error: 1 of 2 query images could not be read" in r.stderr, r.stderr
    assert f"{good}:" in r.stdout and (tmp_path / "n.png").is_file(), r.stdout
    # The neighbours are the readable training images, named by their own index.
    bank = load_file(next((run / "fc7").glob("*.safetensors")))
    assert bank["fc7"].shape[0] == 63 and 0 not in bank["index"].tolist()
    r = subprocess.run([BIN, "neighbours", run, "--test", "3", "--k", "3", "--data", data, "--out",
                        tmp_path / "t.png"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "1 of 3 query images could not be read" in r.stderr, r.stderr
    assert "test #1:" in r.stdout and "test #2:" in r.stdout and "computing" not in r.stderr, r.stdout


def test_predict_a_folder_with_symlinks_predicts_each_image_once(run, tmp_path):
    """One symlink under the folder (to a subfolder, the folder above, or an image in it) failed the
    whole folder ("reached twice (through a symlink)") and counted it as "1 of 1 images"."""
    out, data = run
    folder = tmp_path / "pf"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub2").mkdir()
    shutil.copy(data / "val" / "class0" / "0.png", folder / "a.png")
    shutil.copy(data / "val" / "class1" / "0.png", folder / "sub" / "b.png")
    (folder / "sub2" / "alias").symlink_to("../sub")
    (folder / "sub2" / "up").symlink_to("..")
    (folder / "sub2" / "a_link.png").symlink_to("../a.png")
    r = subprocess.run([BIN, "predict", out, folder], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    heads = [line for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert len(heads) == 2 and {Path(h.rstrip(":")).resolve() for h in heads} == {
        (folder / "a.png").resolve(), (folder / "sub" / "b.png").resolve()}, r.stdout


def test_a_confusion_matrix_of_too_many_classes_is_refused_by_name(run, tmp_path):
    """Every evaluation counted classes² cells per batch (3.8 GB at 21,841 classes; 10^12 at the
    accepted maximum): past 2048 classes none is counted, and --confusion says why."""
    _, data = run
    model = alexnet_rs.AlexNet("cnn4", num_classes=2049)
    ckpt = model.save_checkpoint(tmp_path / "wide")
    images = sorted((data / "val" / "class0").glob("*.png"))[:2]
    (tmp_path / "list.txt").write_text(f"{images[0]} 0\n{images[1]} 2048\n")
    r = cli("eval", ckpt, "--data", tmp_path / "list.txt")
    assert "2 samples" in r.stdout, r.stdout
    r = subprocess.run([BIN, "eval", ckpt, "--data", tmp_path / "list.txt", "--confusion", tmp_path / "c.png"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "2049 classes are more than the 2048" in r.stderr, r.stderr
