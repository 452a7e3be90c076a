"""Worker shares: the batch split the way data-parallel workers split it, and the context a forward takes them in.

A run of `workers` = W data-parallel workers gives each worker an equal, contiguous share of the optimizer's batch:
worker r gets rows r·N/W to (r+1)·N/W - 1, the slice a process of rank r trains on. BatchNorm takes its training
statistics per share. In one process that is emulated: the forward is called inside `worker_shares(W)`, and every
layer that takes per-share statistics (a `PerShare` layer) reads the split from `current()` instead of holding it.
Nothing is set on the modules, so evaluation asks for another split by calling the model in another context.

For speed, `forward_in_shares` reorders the batch so that share r sits in rows r, r + W, r + 2W, ... (`interleave`)
and restores the order of the model's output: every layer between works per sample, and a BN layer's shares are then
a view, (N, C, *) as (N/W, W·C, *), without a copy. The layers know it from the context (`interleaved`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Shares:
    """How the batch a layer sees is split: `count` shares, in contiguous rows or `interleaved`."""

    count: int = 1
    interleaved: bool = False


WHOLE = Shares()
_current: ContextVar[Shares] = ContextVar("normbench_worker_shares", default=WHOLE)


def current() -> Shares:
    """The split the forward under way takes its training statistics over (one share outside any context)."""
    return _current.get()


@contextmanager
def worker_shares(count: int, interleaved: bool = False) -> Iterator[None]:
    """Inside, per-share layers take their training statistics over each of `count` shares of their input."""
    token = _current.set(Shares(count, interleaved and count > 1))
    try:
        yield
    finally:
        _current.reset(token)


class PerShare:
    """Marks a norm layer that takes its training batch statistics per worker share (`current()`): normbench's
    BatchNorm classes and a plugin's classes derived from them. A batch-statistics norm without it is refused with
    workers > 1 (`models.build_model`)."""


def split(x: Tensor, count: int, interleaved: bool = False) -> Tensor:
    """(N, C, *) as (W, N/W, C, *): share r is the contiguous rows r·N/W to (r+1)·N/W - 1 of the batch. `interleaved`:
    the batch comes reordered by `interleave`, share r being rows r, r + W, r + 2W, ... (a view either way)."""
    if interleaved:
        return x.reshape(x.shape[0] // count, count, *x.shape[1:]).transpose(0, 1)
    return x.reshape(count, x.shape[0] // count, *x.shape[1:])


def join(xs: Tensor, interleaved: bool = False) -> Tensor:
    """`split` undone: (W, N/W, C, *) back to (N, C, *) in the batch's order."""
    return (xs.transpose(0, 1) if interleaved else xs).reshape(-1, *xs.shape[2:])


def per_share(v: Tensor, xs: Tensor) -> Tensor:
    """View a (W, C) statistic so that it broadcasts over shares `xs` of shape (W, N/W, C, *)."""
    return v.view(v.shape[0], 1, v.shape[1], *([1] * (xs.dim() - 3)))


def interleave(x: Tensor, count: int) -> Tensor:
    """A batch (N, *) reordered so that share r (rows r·N/W to (r+1)·N/W - 1) is in rows r, r + W, ... (a copy)."""
    return split(x, count).transpose(0, 1).reshape(x.shape)


def restore(out: Tensor, count: int) -> Tensor:
    """`interleave` undone on a model's output."""
    return join(split(out, count, interleaved=True))


def forward_in_shares(model: Callable[[Tensor], Tensor], x: Tensor, count: int) -> Tensor:
    """`model(x)` with each per-share layer taking its statistics over `count` contiguous shares of the batch (the
    whole batch at 1), through the reordered batch (module doc); the output in the batch's order."""
    if count == 1:
        with worker_shares(1):
            return model(x)
    with worker_shares(count, interleaved=True):
        return restore(model(interleave(x, count)), count)
