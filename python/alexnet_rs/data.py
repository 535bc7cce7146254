"""The Rust data pipeline from Python.

``DataLoader(data, ...)`` reads an image folder (one subfolder per class), a list file
(``path label`` lines) or a folder of IDX files (Fashion-MNIST), decodes and augments on Rust
threads (the paper's recipe for the chosen preset), and yields ``(images, labels)`` tensors:
``images`` is ``(B * views, 3, crop, crop)`` float32, ``labels`` ``(B,)`` int64. Iterating the
loader again gives the next epoch (a new shuffle); ``loader.epoch(n)`` gives epoch ``n``. The same
seed gives the same batches whatever ``threads`` is. Bad files are skipped and counted
(``on_bad_image="skip"``, see ``EpochIter.skipped``) or raise :class:`alexnet_rs.DataError`
(``"fail"``).
"""

from ._native import DataLoader, EpochIter, load_image, transform_views

__all__ = ["DataLoader", "EpochIter", "load_image", "transform_views"]
