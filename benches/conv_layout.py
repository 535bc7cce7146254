"""Forward + backward time of AlexNet's convolutions with NCHW against channels_last inputs
(weights NCHW), batch 16, 2 threads, median of 7: the per-layer figures behind the CPU layout
choice in src/model/forward.rs (`cpu_channels_last`).

    .venv/bin/python benches/conv_layout.py
"""

import torch
import torch.nn.functional as F

from timing import median_ms

# name, in channels, out channels, kernel, padding, groups, input side (224x224 images)
LAYERS = [("paper conv2", 96, 256, 5, 2, 2, 27), ("paper conv3", 256, 384, 3, 1, 1, 13),
          ("paper conv4", 384, 384, 3, 1, 2, 13), ("paper conv5", 384, 256, 3, 1, 2, 13),
          ("torchvision conv2", 64, 192, 5, 2, 1, 27), ("torchvision conv3", 192, 384, 3, 1, 1, 13)]


def main():
    torch.set_num_threads(2)
    for name, cin, cout, k, pad, groups, side in LAYERS:
        ms = []
        for channels_last in (False, True):
            x = torch.randn(16, cin, side, side)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            w = torch.randn(cout, cin // groups, k, k, requires_grad=True)
            b = torch.zeros(cout, requires_grad=True)

            def step():
                for t in (x, w, b):
                    t.grad = None  # fresh gradients each time, as a training step's (not an extra add)
                y = F.conv2d(x, w, b, padding=pad, groups=groups)
                y.backward(torch.ones_like(y))

            ms.append(median_ms(step, 7))
        print(f"{name}: NCHW {ms[0]:.1f} ms, channels_last {ms[1]:.1f} ms")


if __name__ == "__main__":
    main()
