"""alexnet_rs.ops.cpu_cache: the caching CPU allocator of the Rust training loop, opened from
Python. Blocks are reused inside the scope and only there, on the scope's thread only, never
handed out twice, all freed when the last scope ends; a training step gives the same result."""

import contextlib
import threading

import pytest
import torch
import torch.nn.functional as F

import alexnet_rs
from alexnet_rs.ops import cpu_cache, cpu_cache_stats

MiB4 = 1 << 20  # float32 elements in 4 MiB


def _delta(before: dict[str, int]) -> dict[str, int]:
    now = cpu_cache_stats()
    return {k: now[k] - before[k] for k in ("hits", "misses")}


def test_freed_blocks_are_reused_inside_and_all_released_after():
    before = cpu_cache_stats()
    with cpu_cache() as active:
        assert active
        x = torch.empty(MiB4)
        p = x.data_ptr()
        del x
        y = torch.empty(MiB4)
        assert y.data_ptr() == p, "a freed block of the same size is handed out again"
        z = torch.empty(MiB4)
        assert z.data_ptr() != y.data_ptr(), "a block in use is never handed out twice"
        for i in range(4):
            a = torch.full((MiB4,), float(i))
            assert (a + 1)[12345].item() == i + 1
        # Below 1 MiB nothing goes through the cache.
        mid = _delta(before)
        small = torch.ones(1000)
        assert _delta(before) == mid
        assert cpu_cache_stats()["cached_bytes"] > 0
        del y, z, small
    d = _delta(before)
    assert d["hits"] >= 5 and d["misses"] >= 2, d
    assert cpu_cache_stats()["cached_bytes"] == 0, "the last scope's end frees the cached blocks"
    # Outside any scope PyTorch's allocator serves everything: nothing counted.
    outside = cpu_cache_stats()
    t = torch.ones(2 * MiB4)
    assert _delta(outside) == {"hits": 0, "misses": 0}
    del t


def test_a_block_that_outlives_its_scope_is_freed_not_kept():
    with cpu_cache():
        keep = torch.ones(MiB4)
    live = cpu_cache_stats()["live_bytes"]
    assert live >= 4 << 20
    del keep
    s = cpu_cache_stats()
    assert s["live_bytes"] == live - (4 << 20) and s["cached_bytes"] == 0, s


def test_other_threads_keep_pytorchs_allocator():
    with cpu_cache():
        before = cpu_cache_stats()

        def other():
            for _ in range(3):
                torch.ones(MiB4).sum()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert _delta(before) == {"hits": 0, "misses": 0}


def test_nested_scopes_and_an_exception_inside():
    with pytest.raises(KeyError):
        with cpu_cache():
            with cpu_cache():
                torch.ones(MiB4)
            before = cpu_cache_stats()
            torch.ones(MiB4)  # the outer scope is still open: a hit
            assert _delta(before) == {"hits": 1, "misses": 0}
            raise KeyError("inside")
    assert cpu_cache_stats()["cached_bytes"] == 0
    before = cpu_cache_stats()
    torch.ones(MiB4)
    assert _delta(before) == {"hits": 0, "misses": 0}, "the exception closed both scopes"


def _train(steps: int, cached: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(8, 3, 63, 63), torch.randint(0, 10, (8,))
    with cpu_cache() if cached else contextlib.nullcontext():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_an_eager_training_loop_gives_the_same_weights_and_hits_the_cache():
    plain = _train(3, cached=False)
    before = cpu_cache_stats()
    cached = _train(3, cached=True)
    assert _delta(before)["hits"] > 0, "fc6/fc7's weight gradients (64 MiB) come back every step"
    assert plain.keys() == cached.keys()
    for k in plain:
        torch.testing.assert_close(cached[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_block_ended_on_another_thread_is_an_error():
    """Its exit there did nothing: the beginning thread went on caching (up to 2 GiB), silently."""
    from alexnet_rs.errors import ConfigError

    block = cpu_cache()
    block.__enter__()
    errors = []

    def end():
        try:
            block.__exit__(None, None, None)
        except ConfigError as e:
            errors.append(str(e))

    t = threading.Thread(target=end)
    t.start()
    t.join()
    alexnet_rs._native.cpu_cache_exit()  # this thread's scope, which the block left open
    assert errors and "must end on the thread that began it" in errors[0], errors
    assert cpu_cache_stats()["cached_bytes"] == 0
