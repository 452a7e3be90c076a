"""What normalization does inside the network, written to TensorBoard.

Forward hooks on every norm layer (an identity under `norm=none`, so runs with and without normalization
compare layer by layer) record the layer's input and output as histograms `watch/act/<layer>/in|out` and their
mean/std as scalars (`.../in_mean`, ...), on the first validation batch of each epoch (`watch/act_eval/...`), and
at `log.hist_points` training steps spread over the run (`schedule`): the first step (the starting distribution),
then the step that completes each k/N of the run, k = 1..N, so the last step is always one and every batch size
is probed at the same fractions of its images (the same x when x counts examples).
At the training steps, each layer with running statistics has them set against the current batch's:
`watch/bn/<layer>/mean/batch|running|gap` and `watch/bn/<layer>/var/batch|running|ratio`, side by side (a norm that
keeps a running variance only, EvoNorm-B0, gets the `var` ones).
Everything is written at the board's x of the step (examples seen or steps, `log.x_axis`). Hooks are attached
only for the step that logs, tensors are subsampled to `log.hist_values` values on the device, and copied to the
host only then.

Hooks run only in eager mode: a compiled forward ignores hooks added after compilation, so the training loop
runs the eager module on the steps this monitor probes (`due`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normbench.parts.models import NORM_SLOT
from normbench.parts.norms import shares
from normbench.run.board import Board, act_tag, bn_tag
from normbench.run.evaluation import has_running_stats, running_stats


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if getattr(m, NORM_SLOT, False)]


def subsample(x: Tensor, most: int) -> Tensor:
    """At most `most` values of x, evenly strided, kept on the device."""
    flat = x.detach().reshape(-1)
    return flat[:: math.ceil(flat.numel() / most)] if flat.numel() > most else flat


def channel_stats(x: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a BN input, the statistics the layer normalizes with.

    From the first two moments, which reduce in one contiguous pass: about 7x faster on CPU than `var` over
    dims (0, 2, 3). Fine for a diagnostic of roughly unit-scale activations; clamped against round-off.
    """
    dims = tuple(d for d in range(x.dim()) if d != channel_dim % x.dim())
    n = x.numel() // x.shape[channel_dim]
    mean = x.sum(dim=dims) / n
    return mean, (x.square().sum(dim=dims) / n - mean.square()).clamp_min(0)


def schedule(points: int, total_steps: int) -> set[int]:
    """The training steps probed in a run of `total_steps`: step 1 and the step completing each k/`points` of the
    run (k = 1..points; none when `points` is 0)."""
    if points <= 0 or total_steps <= 0:
        return set()
    return {1} | {math.ceil(k * total_steps / points) for k in range(1, points + 1)}


class Monitor:
    """Activation and BN statistics of `model`'s norm layers at `points` training steps spread over a run of
    `total_steps` (0: never), at most `most` values per histogram."""

    def __init__(
        self, model: nn.Module, board: Board, points: int, most: int, total_steps: int, layout: str = "image"
    ) -> None:
        self.model, self.board, self.most = model, board, most
        self.steps = schedule(points, total_steps)
        self.layers = norm_layers(model)
        # Sequences put BN's channels last (N, L, D); images and vectors at dim 1.
        self.channel_dim = -1 if layout == "sequence" else 1
        self.handles: list[Any] = []
        self.captured: dict[str, tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]] = {}

    def due(self, step: int) -> bool:
        """Whether training step `step` is probed (`schedule`). Then the loop calls `attach` before the step and
        `write` after it."""
        return step in self.steps

    def attach(self) -> None:
        for name, module in self.layers:
            self.handles.append(module.register_forward_hook(self._capture(name)))

    def _capture(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name in self.captured:  # first call of the step (or validation batch) only
                return
            x = inputs[0].detach().float()
            # With worker shares, the batch statistics of share 0: the ones the running statistics follow.
            split = shares.current() if module.training else shares.WHOLE
            share = shares.split(x, split.count, split.interleaved)[0]
            bn = channel_stats(share, self.channel_dim) if has_running_stats(module) else None
            # Copies now: an in-place activation after the norm (ReLU(inplace=True)) rewrites its output.
            pre, post = subsample(x, self.most).clone(), subsample(output.detach().float(), self.most).clone()
            self.captured[name] = (pre, post, bn)

        return hook

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def write(self, step: int, prefix: str = "act") -> None:
        """Detach the hooks and write what they captured at training step `step`."""
        self.detach()
        x = self.board.x(step)
        for name, (pre, post, bn) in self.captured.items():
            for kind, values in (("in", pre), ("out", post)):
                stats = torch.stack([values.mean(), values.std()]).tolist()
                self.board.histogram(act_tag(prefix, name, kind), values, x)
                self.board.scalars(
                    {act_tag(prefix, name, f"{kind}_mean"): stats[0], act_tag(prefix, name, f"{kind}_std"): stats[1]}, x
                )
            if bn is not None and prefix == "act":
                self.write_bn(name, dict(self.layers)[name], bn, x)
        self.captured.clear()

    def write_bn(self, name: str, module: nn.Module, batch: tuple[Tensor, Tensor], x: int) -> None:
        """Running statistics against this batch's: the gap BN pays for at eval time. The mean's gap is in units of
        the running standard deviation; the variance's ratio is batch over running. Only the statistics the layer
        keeps: EvoNorm-B0 keeps a running variance alone."""
        kept = {key.removeprefix("running_"): value.float() for key, value in running_stats(module).items()}
        batch_values = dict(zip(("mean", "var"), batch, strict=True))
        summaries: dict[str, Tensor] = {}
        if "mean" in kept:
            scale = torch.sqrt(kept["var"] + module.eps) if "var" in kept else torch.ones_like(kept["mean"])
            summaries[bn_tag(name, "mean", "gap")] = ((batch_values["mean"] - kept["mean"]).abs() / scale).mean()
        if "var" in kept:
            summaries[bn_tag(name, "var", "ratio")] = (batch_values["var"] / kept["var"].clamp_min(1e-12)).mean()
        for statistic, running in kept.items():
            self.board.histogram(bn_tag(name, statistic, "batch"), batch_values[statistic], x)
            self.board.histogram(bn_tag(name, statistic, "running"), running, x)
        values = torch.stack(list(summaries.values())).tolist()
        self.board.scalars(dict(zip(summaries, values, strict=True)), x)

    def close(self) -> None:
        self.detach()
