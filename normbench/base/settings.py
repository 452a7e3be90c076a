"""How a config key states its type, default and allowed range, in one place: a dataclass field made by `setting`.

The schema of every config group is made of such fields (the root config in `plan/schema.py`, a dataset's or an
optimizer's in its own class under `parts/`). The range lives next to the default it constrains, so the message
that names what is allowed is derived from the same fact the check uses (`plan/schema.describe`).
"""

from __future__ import annotations

from dataclasses import field
from enum import StrEnum
from typing import Any


class Choice(StrEnum):
    """A closed set of names; as a str, `cfg.budget == "steps"` and f-strings keep working."""


def setting(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    null: str = "",
    volatile: bool = False,
) -> Any:
    """A field with its allowed range (ge: >=, gt: >, lt: <; for lists, of every item), the meaning of null
    where null is allowed, and whether it is volatile (does not change which run this is)."""
    metadata = {"ge": ge, "gt": gt, "lt": lt, "null": null, "volatile": volatile}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# Seeds within ±2³²: torch.manual_seed takes 64 bits, and an epoch's draw seeds with seed·1,000,003 + epoch
# (parts/data/batches.py), which must fit there too.
SEED_LIMIT = 2**32
# OmegaConf's marker of a key without a value (omegaconf.MISSING), stated here so that the schema's classes import
# without OmegaConf (the CLI's help and `list` read them).
MISSING: str = "???"
