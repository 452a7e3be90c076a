"""Hydra's entry point: the task function that every run, and every job of a multirun, goes through.

`normbench run` and `normbench sweep` call `hydra_main(argv)`, so Hydra's own features work unchanged:
`--cfg job`, `-m` multiruns, launcher plugins (joblib, submitit), per-run output directories.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from normbench import results as R
from normbench import schema
from normbench.config import config_dir, validate
from normbench.errors import EXIT_CRASH, NormbenchError
from normbench.sweeps import jobs_threads, same_run

console = Console()


def print_error(error: BaseException, where: str = "") -> None:
    prefix = f"[bold red]Error{where}:[/] "
    console.print(prefix + str(error), highlight=False, soft_wrap=True)


def print_summary(record: dict[str, Any]) -> None:
    m = record["metrics"]
    table = Table(title=f"{record['model']} / {record['norm']}, batch {record['batch_size']}: {record['status']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("val acc (final / best)", f"{m['val_acc']:.4f} / {m['best_val_acc']:.4f}"),
        ("val loss", f"{m['val_loss']:.4f}"),
        ("train acc / loss", f"{m['train_acc']:.4f} / {m['train_loss']:.4f}"),
        *(
            (f"val acc, {k[8:].replace('_', ' ')}", f"{m[k]:.4f}")
            for k in ("val_acc_batch_stats", "val_acc_precise_bn")
            if m.get(k) is not None
        ),
        ("steps / epochs", f"{record['steps']} / {record['epochs']}"),
        ("effective lr", f"{record['effective_lr']:.4g}"),
        ("parameters", f"{record['params']:,}"),
        ("throughput", f"{record['images_per_s']:.0f} images/s on {record['device']} ({record['threads']} threads)"),
        ("wall time", f"{record['wall_s']:.1f} s"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def failure_record(cfg: DictConfig, status: str, reason: str) -> dict[str, Any]:
    """The record of a run that failed before training started (e.g. an invalid value in a sweep)."""
    return {
        "status": status,
        "reason": reason,
        "metrics": {},
        "model": cfg.model.name,
        "norm": cfg.norm.name,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def check_reuse(run_dir: Path, previous: dict[str, Any], cfg: DictConfig, multirun: bool) -> None:
    """Refuse to train into a directory that holds another run, or a finished one outside a sweep."""
    if not same_run(previous.get("config", {}), cfg, schema.VOLATILE):
        raise NormbenchError(
            f"{run_dir} already holds a different run (its results.json has another config). "
            "Choose another directory (hydra.run.dir / hydra.sweep.dir)."
        )
    if not (multirun or cfg.resume):
        raise NormbenchError(
            f"{run_dir} already holds a run with status '{previous['status']}'. Continue it with resume=true, or "
            "choose another directory (hydra.run.dir=DIR); normbench does not overwrite results."
        )


def task(cfg: DictConfig) -> dict[str, Any] | None:
    """One run. In a multirun a failing run is recorded and returned, so the other runs go on."""
    from normbench.train import Run  # deferred: keeps `--cfg`/`--help` fast

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and cfg.threads is None:
        cfg.threads = jobs_threads(hydra_cfg)
    previous = R.read_results(run_dir)
    try:
        if previous is not None:
            check_reuse(run_dir, previous, cfg, multirun)
    except NormbenchError as error:  # the directory is someone else's: leave it exactly as it is
        print_error(error, f" in {run_dir.name}" if multirun else "")
        if multirun:
            return previous
        raise SystemExit(error.exit_code) from None
    if previous is not None and previous["status"] == R.COMPLETED:
        console.print(f"[green]Skipping[/] {run_dir.name}: already completed.", highlight=False)
        return previous
    try:
        validate(cfg)
        record = Run(cfg, run_dir, console).execute(resume=multirun or bool(cfg.resume))
        if multirun:  # one line per run; the sweep's table comes at the end
            m = record["metrics"]
            console.print(
                f"[green]done[/] {run_dir.name}: val acc {m['val_acc']:.4f} (best {m['best_val_acc']:.4f}), "
                f"{record['wall_s']:.0f} s",
                highlight=False,
            )
        else:
            print_summary(record)
        return record
    except NormbenchError as error:
        print_error(error, f" in {run_dir.name}" if multirun else "")
        record_failure(cfg, run_dir, str(error))
        if multirun:
            return R.read_results(run_dir)
        raise SystemExit(error.exit_code) from None
    except Exception as error:
        record_failure(cfg, run_dir, f"{type(error).__name__}: {error}")
        if not multirun:
            raise
        # One broken run must not end the sweep: keep its traceback next to its record.
        (run_dir / "error.txt").write_text(traceback.format_exc())
        print_error(error, f" in {run_dir.name} (traceback in {run_dir / 'error.txt'})")
        return R.read_results(run_dir)


def record_failure(cfg: DictConfig, run_dir: Path, reason: str) -> None:
    """Make sure a failed run has a record, without replacing one the run wrote itself (diverged, ...)."""
    previous = R.read_results(run_dir)
    if previous is None or previous["status"] == R.RUNNING:
        R.write_json(run_dir / R.RESULTS_FILE, failure_record(cfg, R.FAILED, reason))


def hydra_main(argv: list[str]) -> int:
    """Run Hydra's entry point with `argv` as the command line; return the exit code."""
    schema.register()
    saved = sys.argv
    sys.argv = ["normbench", *argv]
    try:
        hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(task)()
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_CRASH
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(hydra_main(sys.argv[1:]))
