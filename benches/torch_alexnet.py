"""AlexNet written in plain PyTorch: torch.nn, grouped nn.Conv2d and F.local_response_norm (per tower
in the paper's network).

The independent reference that alexnet_rs is checked against (same parameter names, so the same
weights load into both) and timed against. The torchvision preset is torchvision's own model.
"""

import torch
import torch.nn.functional as F
from torch import nn

# (out, kernel, stride, padding, groups, lrn, pool) per conv layer; ALEXNET.md.
_CONVS = {
    "paper": [(96, 11, 4, 2, 1, True, True), (256, 5, 1, 2, 2, True, True), (384, 3, 1, 1, 1, False, False),
              (384, 3, 1, 1, 2, False, False), (256, 3, 1, 1, 2, False, True)],
    "caffe": [(96, 11, 4, 0, 1, True, True), (256, 5, 1, 2, 2, True, True), (384, 3, 1, 1, 1, False, False),
              (384, 3, 1, 1, 2, False, False), (256, 3, 1, 1, 2, False, True)],
}
_LRN_K = {"paper": 2.0, "caffe": 1.0}
# Channel groups normalised apart: the paper's two towers each normalised the kernel maps of their
# own GPU (CHM layers-145.cfg: rnorm1a over conv1a's 48 channels); Caffe's one GPU, all of them.
_LRN_GROUPS = {"paper": 2, "caffe": 1}


class TorchAlexNet(nn.Module):
    """The `paper` or `caffe` preset: conv1..conv5, fc6..fc8 (dropout after fc6 and fc7)."""

    def __init__(self, preset: str = "paper", num_classes: int = 1000, input_size: int = 224):
        super().__init__()
        self.preset = preset
        self.specs = _CONVS[preset]
        in_c = 3
        for i, (out, k, s, p, g, _, _) in enumerate(self.specs, 1):
            setattr(self, f"conv{i}", nn.Conv2d(in_c, out, k, s, p, groups=g))
            in_c = out
        with torch.no_grad():  # 256 x 6 x 6 at 224 (227 for caffe)
            flat = self.features(torch.zeros(1, 3, input_size, input_size)).numel()
        self.fc6 = nn.Linear(flat, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)

    def features(self, x):
        for i, (_, _, _, _, _, lrn, pool) in enumerate(self.specs, 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
            if lrn:
                x = torch.cat([F.local_response_norm(t, 5, alpha=1e-4, beta=0.75, k=_LRN_K[self.preset])
                               for t in x.chunk(_LRN_GROUPS[self.preset], 1)], 1)
            if pool:
                x = F.max_pool2d(x, 3, 2, ceil_mode=self.preset == "caffe")
        return x

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)


def reference_model(preset: str, num_classes: int = 1000, input_size: int = 224) -> nn.Module:
    """The reference network; `input_size` sizes fc6 of `paper` and `caffe` (torchvision's pools
    adaptively)."""
    if preset == "torchvision":
        import torchvision

        return torchvision.models.alexnet(weights=None, num_classes=num_classes)
    return TorchAlexNet(preset, num_classes, input_size)
