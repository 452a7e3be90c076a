"""How a run is named: by its norm and the batch one of its BatchNorm layers normalizes over, so that names sort the
way every figure's x axis runs.

    bn_b032            bn, one worker: batch 32
    bn_b002x16         bn, 16 workers of 2 images each (total batch 32)
    gn+ws_b002x16      gn in a model with Weight Standardization (`model.ws=true`: a conv option, models/convs.py)
    gn_b008_seed001    and the other keys that tell the runs of a sweep apart, in key order

`b` is the images per worker (the batch itself with one worker), zero-padded so that name order is numeric order,
and `xW` the workers when there are several. The norm is named as the run compares it (`compared`): with the conv
option its model has on, so that gn and gn + ws differ even where a cell sets `model.ws`. A sweep's `cell`
(configs/cell/: a norm at a worker split) is not repeated, nor a conv option: the label already says them. The
`normbench_run` resolver names a sweep's run directories (`hydra.sweep.subdir`), `normbench_split` a run's own
(`hydra.run.dir`), and the pre-flight names runs with the same functions, so they agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from normbench.parts.models.convs import CONVS, compared

RUN_NAME_RESOLVER, SPLIT_RESOLVER = "normbench_run", "normbench_split"
# Shown by the split label, so not again as a key of their own.
NAMED_BY_SPLIT = ("norm", "batch_size", "workers", "cell", *(f"model.{name}" for name in CONVS))


def images_per_worker(batch_size: int, workers: int) -> int:
    """The images one worker's share of the optimizer's batch holds: what a per-worker BatchNorm normalizes over."""
    return batch_size // workers


def split_label(norm: str, batch_size: int, workers: int, model: Any = None) -> str:
    """`bn_b032`, `bn_b002x16`, `gn+ws_b032`: the norm as compared (with the conv option of `model`, its options) and
    the batch one of its BN layers normalizes over (module doc). A config the schema refuses (workers=0) still gets
    a label here, so that the refusal is the schema's paragraph."""
    each = f"b{images_per_worker(batch_size, workers) if workers > 0 else batch_size:03d}"
    label = compared(norm, model) if model is not None else norm
    return f"{label}_{each}" + (f"x{workers:02d}" if workers > 1 else "")


def swept_keys(overrides: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The keys that tell a sweep's runs apart: those of a job's overrides that `override_dirname` does not
    exclude (`normbench sweep` excludes the keys fixed on its command line) and that are not Hydra's own."""
    from normbench.base.overrides import parse  # Hydra's grammar: imported when a sweep is named, not by the CLI

    parsed = parse(overrides)
    keys = [o.key_or_group for o in parsed if not o.is_delete() and not o.key_or_group.startswith("hydra")]
    return [k for k in dict.fromkeys(keys) if k not in set(exclude)]


def label(key: str, value: Any) -> str:
    """`gn`, `groups016`, `lr0.05`, `widths032-064`: integers zero-padded to 3 digits so that name order is numeric
    order (up to 999); a top-level string (a config group's choice) stands alone."""
    if isinstance(value, list | tuple):
        text = "-".join(label("", v) for v in value)
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int):
        text = f"{value:03d}"
    else:
        text = str(value)
        if "." not in key and isinstance(value, str):
            return re.sub(r"[^\w.+-]", "-", text)
    return re.sub(r"[^\w.+-]", "-", key.rsplit(".", 1)[-1] + text)


def run_name(
    norm: str, batch_size: int, workers: int, overrides: Sequence[str], exclude: Sequence[str], model: Any = None
) -> str:
    """A sweep run's directory name (module doc): never empty, so a sweep of one run still gets its own
    directory. Registered as the `normbench_run` resolver of `hydra.sweep.subdir`."""
    from normbench.base.overrides import parse

    parsed = {o.key_or_group: o.value() for o in parse(overrides)}
    others = sorted(k for k in swept_keys(overrides, exclude) if k not in NAMED_BY_SPLIT)
    return "_".join([split_label(norm, batch_size, workers, model), *(label(k, parsed[k]) for k in others)])


def register_resolvers() -> None:
    """The resolvers configs/config.yaml names directories with; every process that composes registers them first
    (`schema.register`, and a launcher's job process when it imports launch/task.py)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(RUN_NAME_RESOLVER, run_name, replace=True)
    OmegaConf.register_new_resolver(SPLIT_RESOLVER, split_label, replace=True)
