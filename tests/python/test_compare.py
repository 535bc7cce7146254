"""`python -m alexnet_rs.compare` with small sizes: it runs, reports parity, writes its files."""

from alexnet_rs import compare
from conftest import needs_fashion


def test_compare_small(tmp_path):
    d_logits = compare.main(["--batches", "1", "2", "--repeats", "1", "--out", str(tmp_path)])
    assert d_logits <= 1e-5
    report = (tmp_path / "report.md").read_text()
    assert "max |logits difference|" in report and "| 2 |" in report
    assert (tmp_path / "chart.png").stat().st_size > 1000


@needs_fashion
def test_compare_train_step_for_step(tmp_path):
    """torchvision + torch.optim.SGD against our Rust loop, same weights, batches and schedule."""
    worst = compare.main(["--train", "--steps", "50", "--limit", "320", "--out", str(tmp_path)])
    assert worst <= 1e-4, worst
    report = (tmp_path / "report.md").read_text()
    assert "max relative loss difference" in report and "| 50 |" in report
    assert (tmp_path / "train.png").stat().st_size > 1000
