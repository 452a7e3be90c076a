"""Published BN-vs-GN results shipped with normbench (`references.json`), drawn by `normbench report --reference`.

Each reference holds, per norm and batch size, the published values (one per seed where the source gives
seeds), its metric (`error` or `accuracy`, in %), a citation and the setting it was measured in.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from normbench.base.errors import ConfigError


@dataclass(frozen=True)
class Reference:
    name: str
    title: str
    citation: str
    url: str
    setting: str
    metric: str
    points: dict[str, dict[int, list[float]]]  # norm -> batch size -> published values (% metric)

    def error_curve(self, norm: str) -> tuple[list[int], list[float], list[float]]:
        """Batch sizes, mean error % and its std over seeds (0 for a single value), in batch order."""
        sizes = sorted(self.points[norm])
        errors = [[v if self.metric == "error" else 100 - v for v in self.points[norm][b]] for b in sizes]
        return (
            sizes,
            [statistics.fmean(e) for e in errors],
            [statistics.stdev(e) if len(e) > 1 else 0.0 for e in errors],
        )


@cache
def _raw() -> dict[str, Any]:
    return json.loads(resources.files("normbench.run").joinpath("references.json").read_text(encoding="utf-8"))


def load_reference(name: str) -> Reference:
    raw = _raw()
    if name not in raw:
        raise ConfigError(
            f"--reference {name} is not a published result shipped with normbench. References: "
            + "; ".join(f"{n} ({r['title']})" for n, r in raw.items())
            + "."
        )
    r = raw[name]
    points = {norm: {int(b): values for b, values in by_batch.items()} for norm, by_batch in r["points"].items()}
    return Reference(name, r["title"], r["citation"], r["url"], r["setting"], r["metric"], points)
