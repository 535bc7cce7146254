"""`python -m alexnet_rs.compare` with small sizes: it runs, reports parity, writes its files."""

from alexnet_rs import compare


def test_compare_small(tmp_path):
    d_logits = compare.main(["--batches", "1", "2", "--repeats", "1", "--out", str(tmp_path)])
    assert d_logits <= 1e-5
    report = (tmp_path / "report.md").read_text()
    assert "max |logits difference|" in report and "| 2 |" in report
    assert (tmp_path / "chart.png").stat().st_size > 1000
