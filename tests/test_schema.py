"""The config schema: wrong types, out-of-range values and unknown keys stop before anything is written, for
the command line (a real process) and for the checks in this process alike; defaults come from the code they
configure."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, checked, normbench
from omegaconf import OmegaConf
from typer.testing import CliRunner

from normbench.base.errors import ConfigError
from normbench.cli import app
from normbench.launch.compose import compose_unchecked, sweep_jobs
from normbench.plan import schema

# (overrides, the key and value the message must name). Every kind of refusal: a wrong type (int, float, bool,
# enum, list item), a range, a cross-key rule, an unknown key with and without `+`, a removed key.
BAD = [
    (["batch_size=abc"], "batch_size=abc"),
    (["batch_size=0"], "batch_size=0"),
    (["epochs=0"], "epochs=0"),
    (["max_steps=0"], "max_steps=0"),
    (["budget=forever"], "budget=forever"),
    (["budget=steps"], "max_steps=null"),
    (["seed=1.5"], "seed=1.5"),
    (["device=tpu"], "device=tpu"),
    (["threads=0"], "threads=0"),
    (["resume=maybe"], "resume=maybe"),
    (["train.compile=maybe"], "train.compile=maybe"),
    (["eval.batch_size=0"], "eval.batch_size=0"),
    (["eval.precise_bn_images=-1"], "eval.precise_bn_images=-1"),
    (["log.every=0"], "log.every=0"),
    (["log.hist_points=-1"], "log.hist_points=-1"),
    (["log.hist_values=0"], "log.hist_values=0"),
    (["optim.lr=fast"], "optim.lr=fast"),
    (["optim.lr=0"], "optim.lr=0"),
    (["optim.lr_scaling=cubic"], "optim.lr_scaling=cubic"),
    (["optim.schedule=linear"], "optim.schedule=linear"),  # step is a schedule now (issue 28)
    (["optim.base_batch_size=0"], "optim.base_batch_size=0"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps=-1"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1"),
    (["optim.momentum=1"], "optim.momentum=1"),
    (["optim=adamw", "optim.betas=[0.9,1.5]"], "optim.betas=[0.9,1.5]"),
    (["data.train_size=0"], "data.train_size=0"),
    (["data.val_size=0"], "data.val_size=0"),
    (["data.difficulty=-1"], "data.difficulty=-1"),
    (["data.subset=0"], "data.subset=0"),
    (["data.subset=10001"], "data.subset=10001"),
    (["data.val_subset=2001"], "data.val_subset=2001"),
    (["batch_size=512", "data.subset=256"], "batch_size=512"),
    (["norm.impl=fast"], "norm.impl=fast"),
    (["norm.eps=small"], "norm.eps=small"),
    (["model.widths=[a]"], "model.widths[0]=a"),
    (["norm.name=gn"], "norm.name=gn"),
    (["+no_such_key=1"], "'no_such_key'"),
    (["no_such_key=1"], "'no_such_key'"),
    (["+train.foo=1"], "'train.foo'"),
    (["norm.groups=4"], "'norm.groups'"),  # a gn option, while norm=bn
    (["~batch_size"], "batch_size"),
    (["workers=0"], "workers=0"),
    (["workers=3"], "workers=3"),  # does not divide the default batch_size=128
]


def one_paragraph(text: str) -> str:
    assert "Traceback" not in text, text
    assert "\n\n" not in text.strip(), text
    return " ".join(text.split())


@pytest.mark.parametrize(("overrides", "named"), BAD)
def test_the_checks_refuse_with_one_paragraph_naming_key_and_value(overrides, named) -> None:
    with pytest.raises(ConfigError) as refused:
        checked(*overrides)
    assert named in one_paragraph(str(refused.value))


@pytest.mark.parametrize(("overrides", "named"), BAD)
def test_the_command_refuses_every_bad_value_and_writes_nothing(overrides, named, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["run", *overrides], env={"COLUMNS": "200"})
    assert done.exit_code == 2, done.output
    assert named in one_paragraph(done.output)
    assert not any(tmp_path.iterdir())  # no run directory, no outputs/, no log


# One row per kind of refusal, in real processes (about 5 s of start-up each: torch, Hydra).
REAL = ["batch_size=abc", "train.compile=maybe", "optim.lr=fast", "budget=forever", "data.val_size=0",
        "budget=steps", "+no_such_key=1"]  # fmt: skip


@pytest.mark.process
def test_a_real_process_refuses_each_kind_of_bad_value_and_writes_nothing(tmp_path) -> None:
    def attempt(override: str) -> tuple[str, subprocess.CompletedProcess[str], Path]:
        cwd = tmp_path / override.strip("+")
        cwd.mkdir()
        return override, normbench("run", override, cwd=cwd), cwd

    named = {o: n for (o, *_), n in BAD}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(attempt, REAL))
    for override, done, cwd in results:
        assert done.returncode == 2, (override, done.stdout, done.stderr)
        assert done.stderr == "", (override, done.stderr)
        assert named[override] in one_paragraph(done.stdout), (override, done.stdout)
        assert not any(cwd.iterdir()), override


def test_model_defaults_are_the_model_classes_signature_defaults() -> None:
    from normbench.parts.models import FIXED_ARGS, MODELS
    from normbench.parts.models.convs import CONVS

    for name, spec in MODELS.items():  # the slots and the data's shape are given by the norm, convs and data
        params = inspect.signature(spec.cls).parameters
        expected = {p.name: p.default for p in params.values() if p.name not in FIXED_ARGS}
        expected |= {option: False for option in CONVS} if "conv_layer" in params else {}  # each conv option, off
        composed = OmegaConf.to_container(compose_unchecked([f"model={name}", "norm=ln"]).model)
        assert composed.pop("name") == name
        assert composed == {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}, name


def test_norm_defaults_are_the_builders_keyword_defaults() -> None:
    from normbench.parts.norms import NORMS

    for name, spec in NORMS.items():
        params = inspect.signature(spec.builder).parameters.values()
        expected = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        composed = OmegaConf.to_container(compose_unchecked([f"norm={name}"]).norm)  # the schema alone: no model built
        assert composed.pop("name") == name
        impl = composed.pop("impl")
        assert impl == expected.pop("impl", impl), name  # a registry may add impl itself, outside the signature
        assert composed == expected, name
    assert compose_unchecked(["norm=brn"]).norm.impl == "reference"  # PyTorch has no Batch Renormalization kernel


def test_group_yaml_files_only_select_their_schema() -> None:
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        if path.parent.name in ("model", "norm", "data", "optim"):
            content = yaml.safe_load(path.read_text())
            assert list(content) == ["defaults"], f"{path} repeats values the schema states"
            assert content["defaults"] == [f"/schema/{path.parent.name}/{path.stem}@_here_"], path


def test_closed_sets_compare_and_serialize_as_plain_strings() -> None:
    cfg = compose_unchecked(["budget=steps", "max_steps=5", "optim.lr_scaling=sqrt", "device=cpu"])
    assert cfg.budget == "steps" and f"{cfg.budget}" == "steps" and cfg.optim.lr_scaling == "sqrt"
    stored = json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True)))
    assert stored["budget"] == "steps" and stored["device"] == "cpu" and stored["norm"]["impl"] == "torch"
    assert yaml.safe_load(OmegaConf.to_yaml(cfg))["optim"]["schedule"] == "cosine"


def test_volatile_keys_come_from_the_schema_and_never_name_a_run() -> None:
    assert set(schema.VOLATILE) == {"device", "threads", "resume", "quiet", "log.activations", "launch"}
    exclude = compose_unchecked([], with_hydra=True).hydra.job.config.override_dirname.exclude_keys
    assert set(schema.VOLATILE) <= set(exclude) and {"sweep", "hydra/launcher"} <= set(exclude)


def test_report_reads_the_schema_without_importing_torch() -> None:
    code = "import sys, normbench.run.report; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("overrides", "runs"),
    [
        (["norm=bn,gn", "batch_size=2,8"], 4),
        (["norm=bn,gn", "batch_size=range(2,10,4)", "seed=0"], 4),
        (["model=choice(mlp,cnn)", "norm=ln", "norm=rms,bn"], 4),  # a key given twice: the last one counts
        (["sweep=paper", "batch_size=16,32"], 20),  # the preset's grid, the command line winning on batch_size
    ],
)
def test_sweep_expansion_agrees_with_hydras_basic_sweeper(overrides, runs) -> None:
    # The oracle is Hydra's own sweeper (private API, used here only to check the public-API expansion).
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    preset = {"sweep=paper": ["norm=bn,gn", "batch_size=16,32,64,128,256", "seed=0,1,2,3,4"]}.get(overrides[0], [])
    given = {o.split("=")[0] for o in overrides}
    merged = [*(p for p in preset if p.split("=")[0] not in given), *overrides]
    expected = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(merged), None)[0]
    assert sweep_jobs(overrides) == expected
    assert len(expected) == runs
