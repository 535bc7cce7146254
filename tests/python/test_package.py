"""The package imports, registers its ops and exposes the preset tables."""

import torch

import alexnet_rs


def test_import_registers_ops():
    assert hasattr(torch.ops.alexnet_rs, "lrn")
    assert hasattr(torch.ops.alexnet_rs, "lrn_backward")
    assert alexnet_rs.__version__.count(".") == 2


def test_parameter_counts_match_torchvision():
    import torchvision

    tv = torchvision.models.alexnet(weights=None)
    ours = dict(alexnet_rs.param_shapes("torchvision"))
    theirs = {k: list(v.shape) for k, v in tv.state_dict().items()}
    assert ours == theirs
    assert sum(p.numel() for p in tv.parameters()) == 61_100_840


def test_layer_table_paper():
    rows = alexnet_rs.layer_table("paper")
    assert sum(r[3] for r in rows) == 60_965_224
    sides = [r[2][1] for r in rows if r[0] in ("conv1", "conv1.pool", "conv2.pool", "conv5.pool")]
    assert sides == [55, 27, 13, 6]


def test_bad_preset_is_a_config_error():
    import pytest

    with pytest.raises(alexnet_rs.ConfigError, match="unknown preset"):
        alexnet_rs.layer_table("vgg")
    with pytest.raises(ValueError):
        alexnet_rs.param_shapes("paper", num_classes=0)


def test_the_data_loader_shows_its_arguments():
    # help(alexnet_rs.DataLoader) and inspect showed the wrapper's (*args, **kwargs).
    import inspect

    params = inspect.signature(alexnet_rs.data.DataLoader).parameters
    assert list(params)[:4] == ["data", "split", "preset", "crop"] and params["batch_size"].default == 64
