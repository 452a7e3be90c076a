"""The command line: help, list, explain, Hydra pass-through, and clear errors before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, normbench
from typer.testing import CliRunner

from normbench.cli import app
from normbench.parts.models import MODELS
from normbench.parts.norms import NORMS

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_help_explains_groups_and_gives_examples() -> None:
    code, out = invoke("--help")
    text = "".join(out.split())  # the help wraps its lines
    assert code == 0 and f"model={'|'.join(MODELS)}" in text and f"norm={'|'.join(NORMS)}" in text  # registry order
    assert {"frn", "evonorm_s0", "evonorm_b0"} <= set(NORMS)
    code, out = invoke("run", "--help")
    assert code == 0 and "normbench run model=cnn norm=gn norm.groups=8" in out and "--cfg job" in out
    code, out = invoke("sweep", "--help")
    assert code == 0 and "hydra/launcher=parallel" in out and "hydra/launcher=slurm" in out


def test_list_names_every_registered_choice() -> None:
    code, out = invoke("list")
    assert code == 0
    for name in (*NORMS, "mlp", "cnn", "transformer", "synthetic", "cifar10", "sgd", "adamw", "ws"):
        assert f"│ {name} " in out


def test_explain_answers_the_notes_question() -> None:
    code, out = invoke("explain", "bn", "--shape", "2,8,4,4")
    assert code == 0
    assert "N,H,W" in out and "8 means and 8 variances" in out and "│ 32 " in out and "differ" in out
    code, out = invoke("explain", "gn", "--shape", "2,8,4,4", "--groups", "4")
    assert code == 0 and "C/G,H,W" in out and "8 means" in out and "identical" in out
    code, out = invoke("explain", "in", "--shape", "4,256")
    assert code == 2 and "single value per sample" in out and "Traceback" not in out
    code, out = invoke("explain", "gn", "--shape", "4,256")  # GN on vectors: groups of channels, per sample
    assert code == 0 and "G = 8, 32 channels per group" in out and "32 means" in out and "notes call GN" in out
    code, out = invoke("explain", "gn", "--shape", "4,8")
    assert "G = C = 8: each group is one channel, which is InstanceNorm" in " ".join(out.split()) and "refused" in out


def test_explain_says_what_a_worker_share_is_and_what_syncbn_averages() -> None:
    code, out = invoke("explain", "bn", "--shape", "8,8,4,4", "--workers", "4")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "4 workers, each a contiguous share of 2 samples" in text
    assert "32 means and 32 variances" in text and "(4 × 8 means, 32 values each)" in text and "worker 0's" in text
    code, out = invoke("explain", "syncbn", "--shape", "8,8,4,4", "--workers", "4")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "8 means and 8 variances" in text and "= bn over the total batch of 8" in text
    code, out = invoke("explain", "gn", "--shape", "8,8,4,4", "--workers", "4", "--groups", "4")
    assert code == 0 and "no effect" in out
    code, out = invoke("explain", "bn", "--shape", "8,16", "--workers", "3")
    assert code == 2 and "--workers 3 does not divide the batch N=8" in out and "Traceback" not in out


BAD = [
    (
        ["norm=batchnorm"],
        "Could not find 'norm/batchnorm' Available options in 'norm': " + " ".join(sorted(NORMS)),
    ),
    (["model=mlp", "norm=gn", "norm.groups=512"], "With as many groups as channels each group is one channel"),
    (["model=mlp", "norm=in"], "norm=in cannot normalize vector features (N, C)"),
    (["norm=gn", "norm.groups=3"], "the norm layer 'stage1.norm' (32 channels) cannot be built. norm=gn: groups=3"),
    (["batch_size=0"], "batch_size=0 is not valid: it must be a whole number >= 1"),
    (["model=mlp", "batch_size=1"], "batch_size=1 with norm=bn on model=mlp: this model's norms see (N, C) vectors"),
    (["model=mlp", "batch_size=1", "norm=brn"], "or a norm that works per sample (ln, gn, rms)."),
    (["epochs=0"], "epochs=0 is not valid"),
    (["max_steps=-5"], "max_steps=-5 is not valid"),
    (["optim.lr=0"], "optim.lr=0 is not valid: it must be a number > 0"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 is not valid"),
    pytest.param(
        ["device=cuda"],
        "device=cuda is not available on this machine. Available: cpu",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
    ),
    (["data=cifar10", "data.root=/nonexistent/cifar"], "CIFAR-10 is missing in /nonexistent/cifar"),
    (["no_such_key=1"], "Unknown setting 'no_such_key': normbench has no such key"),
    (["budget=forever"], "budget=forever is not valid: it must be one of epochs, steps"),
    (["batch_size=100000"], "batch_size=100000 is larger than the 10000 training images"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_bad_input_stops_before_training_with_one_paragraph(overrides, message, tmp_path) -> None:
    code, out = invoke("run", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2, out
    assert message in " ".join(out.split())
    assert "Traceback" not in out
    assert "\n\n" not in out.strip()  # one paragraph
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_bad_run_in_a_sweep_stops_the_whole_sweep_before_training(tmp_path) -> None:
    code, out = invoke("sweep", "model=mlp,cnn", "norm=in", f"hydra.sweep.dir={tmp_path}")
    assert code == 2
    assert "in the run" in out and "model=mlp" in out and "cannot normalize vector features" in " ".join(out.split())
    assert not any(tmp_path.iterdir())


@pytest.mark.process
def test_real_process_exit_codes_and_hydra_pass_through(tmp_path) -> None:
    bad = normbench("run", "model=mlp", "norm=in", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    shown = normbench("run", "norm=gn", "batch_size=16", "--cfg", "job", cwd=tmp_path)
    assert shown.returncode == 0 and "name: gn" in shown.stdout and "batch_size: 16" in shown.stdout
    assert not (tmp_path / "runs").exists()  # --cfg prints, trains nothing


@pytest.mark.process
def test_a_run_from_another_directory_writes_its_outputs(tmp_path) -> None:
    run_dir = tmp_path / "my-run"
    done = normbench(
        "run", "model=mlp", "norm=ln", "max_steps=4", "epochs=1", "data.train_size=64", "data.val_size=32",
        "batch_size=16", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 4
    assert (run_dir / ".hydra" / "config.yaml").exists() and list(run_dir.glob("events.out.tfevents.*"))
    assert "mlp / ln, batch 16: completed" in done.stdout
    again = normbench("run", "model=mlp", "norm=ln", "max_steps=4", "epochs=1", "data.train_size=64",
                      "data.val_size=32", "batch_size=16", f"hydra.run.dir={run_dir}", cwd=ROOT)  # fmt: skip
    assert again.returncode == 2 and "already holds a run with status 'completed'" in again.stdout
    assert json.loads((run_dir / "results.json").read_text()) == record  # results never overwritten


@pytest.mark.process
def test_a_directory_holding_another_run_is_left_untouched(tmp_path) -> None:
    from normbench.base.files import write_json

    run_dir = tmp_path / "r"
    other = {"status": "running", "config": {"batch_size": 999}, "metrics": {}}
    write_json(run_dir / "results.json", other)
    done = normbench("run", "max_steps=2", f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    assert done.returncode == 2 and "already holds a different run" in done.stdout
    assert json.loads((run_dir / "results.json").read_text()) == other


@pytest.mark.process
def test_debug_shows_the_traceback(tmp_path) -> None:
    shown = normbench("run", "--debug", "model=mlp", "norm=in", cwd=tmp_path)
    assert shown.returncode == 2
    assert "Traceback" in shown.stderr and "NormError" in shown.stderr
    assert "norm=in cannot normalize vector features" in shown.stdout


ANSWERS = {  # what a user types to ask, and whether it may import Hydra (completion asks Hydra for its groups)
    "help": (["--help"], False),
    "version": (["--version"], False),
    "list": (["list"], False),
    "explain": (["explain", "bn"], False),
    "run-help": (["run", "--help"], False),
    "sweep-help": (["sweep", "--help"], False),
    "completion": (["run", "norm="], True),
}


@pytest.mark.parametrize("asked", ANSWERS)
def test_commands_that_only_answer_import_no_torch(asked) -> None:
    """help, --version, list, explain and a TAB answer without importing torch (seconds on a small machine), and
    without Hydra except completion: in a fresh interpreter, as the console script runs them. Their time is
    `make bench BENCH="--sections cli"`'s, not a test's."""
    words, hydra_too = ANSWERS[asked]
    env = {**os.environ, "COLUMNS": "120"}
    if asked == "completion":  # as bash asks for it on a TAB
        env |= {"_NORMBENCH_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(["normbench", *words]),
                "COMP_CWORD": str(len(words))}  # fmt: skip
    code = (
        "import sys\n"
        f"sys.argv = {['normbench', *words]!r}\n"
        "from normbench.cli import app\n"
        "try:\n"
        "    app(prog_name='normbench')\n"
        "except SystemExit as exit_:\n"
        "    assert exit_.code in (0, None), exit_.code\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'hydra'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    answer, loaded = done.stdout.rsplit("LOADED", 1)
    assert ("norm=bn" if asked == "completion" else "bn" if asked in ("list", "explain") else "normbench") in answer
    assert loaded.strip() in ({"[]", "['hydra']"} if hydra_too else {"[]"}), done.stdout
