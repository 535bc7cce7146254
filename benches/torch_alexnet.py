"""AlexNet written in plain PyTorch: torch.nn, grouped nn.Conv2d and F.local_response_norm.

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


class TorchAlexNet(nn.Module):
    """The `paper` or `caffe` preset: conv1..conv5, fc6..fc8 (dropout after fc6 and fc7)."""

    def __init__(self, preset: str = "paper", num_classes: int = 1000):
        super().__init__()
        self.preset = preset
        self.specs = _CONVS[preset]
        in_c = 3
        for i, (out, k, s, p, g, _, _) in enumerate(self.specs, 1):
            setattr(self, f"conv{i}", nn.Conv2d(in_c, out, k, s, p, groups=g))
            in_c = out
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)

    def forward(self, x):
        for i, (_, _, _, _, _, lrn, pool) in enumerate(self.specs, 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
            if lrn:
                x = F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=_LRN_K[self.preset])
            if pool:
                x = F.max_pool2d(x, 3, 2, ceil_mode=self.preset == "caffe")
        x = torch.flatten(x, 1)
        x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)


def reference_model(preset: str, num_classes: int = 1000) -> nn.Module:
    if preset == "torchvision":
        import torchvision

        return torchvision.models.alexnet(weights=None, num_classes=num_classes)
    return TorchAlexNet(preset, num_classes)
