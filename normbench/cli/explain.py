"""`normbench explain NORM OVERRIDES...`: what NORM computes at every norm layer of the model a run would build, for
the run's data and batch (`normbench explain bn data=digits model=resnet20 batch_size=16`).

The run's config is composed and planned as `normbench run` plans it (its data described: shape and classes, no
image decoded), its model built on the CPU, and each norm layer's input shape found by one forward of a zero image;
the norm's statistics on each are those of `normbench explain NORM --shape ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from normbench.base.overrides import hydra_value
from normbench.launch.compose import compose_run
from normbench.launch.preflight import without_hydra
from normbench.parts.data import DataShape
from normbench.parts.models import build_model, norm_inputs, split_name
from normbench.parts.norms import explain
from normbench.parts.norms.explain import NormExplanation
from normbench.plan.plan import RunPlan, plan_run


@dataclass(frozen=True)
class ModelNorms:
    """A planned run's norm layers: each one's name, input shape (a training batch) and what the norm does there."""

    plan: RunPlan
    layers: list[tuple[str, tuple[int, ...], NormExplanation]]

    @property
    def data(self) -> DataShape:
        return self.plan.data


def model_norms(norm: str, overrides: list[str]) -> ModelNorms:
    """The norm layers of the run `norm=NORM OVERRIDES` describes. Raises NormbenchError for what the run refuses
    to plan or build (unknown keys, missing data, a norm the model's layout does not support)."""
    here = Path.cwd() / "explain"  # planned only: nothing is written
    cfg = compose_run([f"norm={norm}", *overrides, f"hydra.run.dir={hydra_value(str(here))}"])
    plan = plan_run(without_hydra(cfg), here)
    config = plan.config
    model = build_model(plan.options("model"), plan.options("norm"), plan.data.channels, plan.data.image_size,
                        plan.data.classes, per_share=config.workers > 1)  # fmt: skip
    _, options = split_name(plan.options("norm"))
    layers = []
    del model  # built for its refusals (a norm the layout does not support, groups that do not divide)
    for name, one in norm_inputs(plan.options("model"), plan.data.channels, plan.data.image_size,
                                 plan.data.classes).items():  # fmt: skip
        shape = (config.batch_size, *one[1:])
        layers.append((name, shape, explain(config.norm.name, shape, config.workers, **options)))
    return ModelNorms(plan, layers)
