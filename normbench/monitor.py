"""What normalization does inside the network, written to TensorBoard.

* Activation distributions: forward hooks on every norm layer (an identity under `norm=none`, so runs
  with and without normalization compare layer by layer) record the layer's input and output as
  histograms `act/<layer>/pre|post` and their mean/std as scalars, every `log.hist_every` training steps
  and on the first validation batch of each epoch (`act_eval/...`). Hooks are attached only for the
  step that logs, tensors are subsampled to `log.hist_values` values on the device, and copied to the
  host only then.
* BatchNorm's two modes: at the same steps, each BN-family layer's running mean/var against the
  current batch's statistics (`bn/<layer>/...`); after each epoch the validation accuracy three ways:
  eval mode with running statistics (the default `val/acc`), train mode with batch statistics
  (`val/acc_batch_stats`), and with population statistics re-estimated over `eval.precise_bn_batches`
  training batches with frozen weights (`val/acc_precise_bn`, PreciseBN, Wu & Johnson 2021).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from normbench.board import Board
from normbench.models import NORM_SLOT

if TYPE_CHECKING:
    from normbench.train import Run


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if getattr(m, NORM_SLOT, False)]


def has_running_stats(module: nn.Module) -> bool:
    return getattr(module, "running_mean", None) is not None and hasattr(module, "momentum")


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


class Monitor:
    def __init__(self, model: nn.Module, board: Board, cfg: Any, device: torch.device) -> None:
        self.model, self.board, self.device = model, board, device
        self.every = cfg.log.hist_every
        self.most = cfg.log.hist_values
        self.precise_bn_batches = cfg.eval.precise_bn_batches
        self.bn_modes = cfg.eval.bn_modes
        self.layers = norm_layers(model)
        self.bn_layers = [(n, m) for n, m in self.layers if has_running_stats(m)]
        # Sequences put BN's channels last (N, L, D); images and vectors at dim 1.
        self.channel_dim = -1 if getattr(model, "layout", "") == "sequence" else 1
        self.handles: list[Any] = []
        self.captured: dict[str, tuple[Tensor, Tensor]] = {}

    # -- hooks --

    def attach(self) -> None:
        for name, module in self.layers:
            self.handles.append(module.register_forward_hook(self._capture(name)))

    def _capture(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name in self.captured:  # first call of the step (or validation batch) only
                return
            x = inputs[0].detach().float()
            bn = channel_stats(x, self.channel_dim) if has_running_stats(module) else None
            # Copies now: an in-place activation after the norm (ReLU(inplace=True)) rewrites its output.
            pre, post = subsample(x, self.most).clone(), subsample(output.detach().float(), self.most).clone()
            self.captured[name] = (pre, post, bn)

        return hook

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def write(self, step: int, prefix: str) -> None:
        for name, (pre, post, bn) in self.captured.items():
            for kind, values in (("pre", pre), ("post", post)):
                stats = torch.stack([values.mean(), values.std()]).tolist()
                self.board.histogram(f"{prefix}/{name}/{kind}", values, step)
                self.board.scalars(
                    {f"{prefix}/{name}/{kind}_mean": stats[0], f"{prefix}/{name}/{kind}_std": stats[1]}, step
                )
            if bn is not None and prefix == "act":
                self.write_bn(name, dict(self.layers)[name], bn, step)
        self.captured.clear()

    def write_bn(self, name: str, module: nn.Module, batch: tuple[Tensor, Tensor], step: int) -> None:
        """Running statistics against this batch's: the gap BN pays for at eval time."""
        batch_mean, batch_var = batch
        run_mean, run_var = module.running_mean.float(), module.running_var.float()
        gap = ((batch_mean - run_mean).abs() / torch.sqrt(run_var + module.eps)).mean()
        ratio = (batch_var / run_var.clamp_min(1e-12)).mean()
        tag = f"bn/{name}"
        for label, tensor in (
            ("running_mean", run_mean),
            ("batch_mean", batch_mean),
            ("running_var", run_var),
            ("batch_var", batch_var),
        ):
            self.board.histogram(f"{tag}/{label}", tensor, step)
        gap_value, ratio_value = torch.stack([gap, ratio]).tolist()
        self.board.scalars({f"{tag}/mean_gap": gap_value, f"{tag}/var_ratio": ratio_value}, step)

    # -- called by the training loop --

    def before_step(self, step: int) -> None:
        if self.every and step % self.every == 0:
            self.attach()

    def after_step(self, step: int) -> None:
        if self.handles:
            self.detach()
            self.write(step, "act")

    def end_epoch(self, run: Run, step: int) -> dict[str, float]:
        """Validation-time activations and, for BN-family models, the two other ways to evaluate BN."""
        model = run.model
        model.eval()
        self.attach()
        with torch.no_grad():
            x, _ = next(iter(run.val_batches.epoch()))
            model(x)
        self.detach()
        self.write(step, "act_eval")
        extra: dict[str, float] = {}
        if self.bn_layers and self.bn_modes:
            with frozen_buffers(model):
                model.train()
                extra["val_acc_batch_stats"] = run.evaluate(batch_stat_batches(run))[1]
            if self.precise_bn_batches:
                precise = precise_bn(model, run.train_batches, run.state.epoch, self.precise_bn_batches)
                extra["val_acc_precise_bn"] = run.evaluate(model=precise.eval())[1]
            model.eval()
            self.board.scalars({f"val/{k[4:]}": v for k, v in extra.items()}, step)
        return extra

    def close(self) -> None:
        self.detach()


class frozen_buffers:
    """Restore every buffer (BN running statistics) on exit: a train-mode pass must not change them."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved = {k: v.clone() for k, v in self.model.named_buffers()}

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(self.saved[k])


def batch_stat_batches(run: Run) -> Any:
    """Validation batches of the training batch size: batch statistics depend on it."""
    from normbench.data import Batches

    b = run.val_batches
    size = min(run.cfg.batch_size, len(b.labels))
    return Batches(
        b.images,
        b.labels,
        size,
        run.data.mean,
        run.data.std,
        b.images.device,
        train=False,
        channels_last=run.cfg.train.channels_last,
    )


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Any, epoch: int, num_batches: int) -> nn.Module:
    """A copy of `model` whose BN statistics are the cumulative average over `num_batches` training
    batches (momentum=None) with the weights frozen, instead of the exponential average of training."""
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if has_running_stats(m)]
    for m in layers:
        m.running_mean.zero_()
        m.running_var.fill_(1)
        m.num_batches_tracked.zero_()
        m.momentum = None
    model.train()
    for i, (x, _) in enumerate(batches.epoch(epoch + 10_000)):  # a draw of its own, not training's order
        if i >= num_batches:
            break
        model(x)
    return model
