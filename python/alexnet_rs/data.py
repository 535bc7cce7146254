"""The Rust data pipeline from Python.

``DataLoader(data, ...)`` reads an image folder (one subfolder per class), a list file
(``path label`` lines) or a folder of IDX files (Fashion-MNIST), decodes and augments on Rust
threads (the paper's recipe for the chosen preset), and yields ``(images, labels)`` tensors:
``images`` is ``(B * views, 3, crop, crop)`` float32, ``labels`` ``(B,)`` int64. Iterating the
loader again gives the next epoch (a new shuffle); ``loader.epoch(n)`` gives epoch ``n``. The same
seed gives the same batches whatever ``threads`` is. Bad files are skipped and counted
(``on_bad_image="skip"``, see ``EpochIter.skipped``) or raise :class:`alexnet_rs.DataError`
(``"fail"``). The test split of a folder with ``train/`` and ``val/`` (or ``test/``) is labelled by
``train/``'s class folders: a ``val/`` that lacks a class keeps the training labels, and a class
``train/`` lacks raises :class:`alexnet_rs.DataError` naming it. ``classes`` (e.g. the training
loader's ``classes``) labels the split by those class names instead of its own folders' order
(the same rules). With ``rank`` and ``world_size`` (either given, even ``world_size=1``) the
loader is that rank's shard. For ``view="train"`` every rank gets the same number of full
batches, and a batch whose images were all skipped comes empty, so that the ranks' steps stay in
step and a loop knows its place in the epoch, as the Rust training loop does (without a shard,
such a batch is left out). For an evaluation view (``"center"``, ``"ten_crop"``) the shards
together cover every sample once: the last global batch is split as far as it goes (a rank may
get a smaller batch or one fewer), as the Rust evaluation does.
"""

import inspect

from . import _native
from ._boundary import checked
from ._native import EpochIter

load_image = checked(_native.load_image)
transform_views = checked(_native.transform_views)


class DataLoader(_native.DataLoader):
    __doc__ = _native.DataLoader.__doc__
    # help() and inspect show the arguments, not __new__'s (*args, **kwargs).
    __signature__ = inspect.signature(_native.DataLoader)

    def __new__(cls, *args, **kwargs):
        # An epoch with no batch is said by the native constructor (a warning naming why).
        return checked(_native.DataLoader.__new__)(cls, *args, **kwargs)

    def epoch(self, epoch: int) -> EpochIter:
        """The batches of epoch ``epoch`` (its shuffle and augmentation depend on it and the seed)."""
        return checked(_native.DataLoader.epoch)(self, epoch)


__all__ = ["DataLoader", "EpochIter", "load_image", "transform_views"]
