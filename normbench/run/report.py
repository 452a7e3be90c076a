"""`normbench report DIR`: the comparison you look at.

Reads every `results.json` under DIR (one run, a sweep, or a partial sweep), groups runs that differ only
by seed, and writes next to them:

* `summary.csv` (one row per run) and `summary.json` (runs and seed-aggregated groups),
* `error_vs_batch.png`: final validation error against batch size on a log₂ axis, one line per norm,
  mean ± std over seeds (the GroupNorm paper's Figure 1),
* `curves.png`: train (solid) and validation (dashed) loss against examples seen, one panel per batch size,
  one colour per norm, so different batch sizes are compared at equal data seen,
* `report.md`, which embeds both with the table: a sweep's outcome is one file to open.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from normbench.base.errors import ConfigError
from normbench.base.files import write_atomic, write_json
from normbench.parts.norms import NORMS
from normbench.run import record as R
from normbench.run.record import RunRecord, UnreadableRecord, find_records
from normbench.run.references import Reference
from normbench.run.schema import VOLATILE

AXES = ("model", "norm", "batch_size", "seed")  # what a table shows; the rest of an override is a "variant"
RUN_COLUMNS = (
    "run",
    "status",
    "model",
    "norm",
    "batch_size",
    "seed",
    "variant",
    "val_acc",
    "val_err",
    "val_loss",
    "best_val_acc",
    "train_loss",
    "steps",
    "epochs",
    "wall_s",
    "images_per_s",
    "effective_lr",
    "reason",
)


def _overrides(run_dir: Path) -> list[str]:
    try:
        return list(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


def _variant_overrides(run_dir: Path) -> list[str]:
    """The run's overrides of keys other than the table's axes, the volatile ones and Hydra's own."""
    overrides = _overrides(run_dir)
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)]
    return [
        o for o, k in zip(overrides, keys, strict=True) if k not in (*AXES, *VOLATILE) and not k.startswith("hydra")
    ]


def _run_name(root: Path, run_dir: Path) -> str:
    return str(run_dir.relative_to(root)) if run_dir != root else "."


def unreadable(root: Path) -> list[dict[str, str]]:
    """The results.json files under `root` that are not normbench records: {run, reason} each."""
    return [
        {"run": _run_name(root, d), "reason": str(r)} for d, r in find_records(root) if isinstance(r, UnreadableRecord)
    ]


def collect(root: Path) -> list[dict[str, Any]]:
    """One flat row per readable run under `root` (with its history and curve), sorted by model, norm, batch
    size. Unreadable records are not rows: `unreadable` lists them."""
    if not root.exists():
        raise ConfigError(f"{root} does not exist: give a run or sweep directory (it holds results.json files).")
    everything = list(find_records(root))
    found = [(d, r) for d, r in everything if isinstance(r, RunRecord)]
    if not found:
        bad = f" ({len(everything)} results.json there, none readable as a record)" if everything else ""
        raise ConfigError(f"No normbench record under {root}{bad}: give a run or sweep directory written by normbench.")
    extra = {d: _variant_overrides(d) for d, _ in found}
    common = set.intersection(*(set(v) for v in extra.values())) if extra else set()
    rows = []
    for run_dir, rec in found:
        m = rec.metrics
        val_acc = m.val_acc if rec.status == R.COMPLETED else None
        rows.append(
            {
                "run": _run_name(root, run_dir),
                "status": rec.status,
                "model": rec.model,
                "norm": rec.norm,
                "batch_size": rec.batch_size,
                "seed": rec.seed,
                "variant": ",".join(o for o in extra[run_dir] if o not in common),
                "val_acc": val_acc,
                "val_err": None if val_acc is None else 1 - val_acc,
                "val_loss": m.val_loss,
                "best_val_acc": m.best_val_acc,
                "train_loss": m.train_loss,
                "steps": rec.steps,
                "epochs": rec.epochs,
                "wall_s": rec.wall_s,
                "images_per_s": rec.images_per_s,
                "effective_lr": rec.effective_lr,
                "reason": rec.reason,
                "history": rec.history,
                "curve": rec.curve,
            }
        )
    return sorted(
        rows, key=lambda r: (str(r["model"]), r["variant"], _norm_rank(r["norm"]), r["batch_size"] or 0, r["seed"] or 0)
    )


def _norm_rank(norm: str | None) -> tuple[int, str]:
    order = list(NORMS)  # registration order
    return (order.index(norm) if norm in order else len(order), str(norm))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that differ only by seed, as one group: mean ± std of the final validation error."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["variant"], row["norm"], row["batch_size"])].append(row)
    out = []
    for (model, variant, norm, batch_size), members in groups.items():
        errors = [r["val_err"] for r in members if r["val_err"] is not None]
        out.append(
            {
                "model": model,
                "variant": variant,
                "norm": norm,
                "batch_size": batch_size,
                "runs": len(members),
                "completed": len(errors),
                "not_completed": {r["run"]: r["status"] for r in members if r["val_err"] is None},
                "seeds": sorted(r["seed"] for r in members if r["seed"] is not None),
                "val_err_mean": statistics.fmean(errors) if errors else None,
                "val_err_std": statistics.stdev(errors) if len(errors) > 1 else (0.0 if errors else None),
            }
        )
    return out


def summarize(root: Path) -> dict[str, Any]:
    rows = collect(root)
    return {"root": str(root), "runs": rows, "groups": aggregate(rows), "unreadable": unreadable(root)}


def write_summary(root: Path, out: Path | None = None, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.csv and summary.json of the runs under `root` (or the `summary` already made of them), written into
    `out` (default: `root`)."""
    summary = summary or summarize(root)
    out = out or root
    out.mkdir(parents=True, exist_ok=True)

    def write_csv(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary["runs"])

    # Atomic like every record: two sweeps into one directory, or a report during a sweep, may write it at once.
    write_atomic(out / "summary.csv", write_csv)
    compact = {**summary, "runs": [{k: r[k] for k in RUN_COLUMNS} for r in summary["runs"]]}
    write_json(out / "summary.json", compact)
    return summary


def _experiments(summary: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Groups by (model, variant): each is one table and one figure."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for g in summary["groups"]:
        out[(g["model"], g["variant"])].append(g)
    return out


def _cell(g: dict[str, Any] | None) -> str:
    if g is None:
        return ""
    if g["val_err_mean"] is None:
        return "not completed: " + ", ".join(sorted(set(g["not_completed"].values())))  # e.g. still running
    text = f"{100 * g['val_err_mean']:.1f}"
    if g["completed"] > 1:
        text += f" ± {100 * g['val_err_std']:.1f}"
    if g["not_completed"]:
        text += f" ({len(g['not_completed'])} not completed)"
    return text


def table_rows(groups: list[dict[str, Any]]) -> tuple[list[int], list[tuple[str, list[str]]]]:
    """Norms × batch sizes of one experiment as text cells: final val error % (mean ± std over seeds)."""
    sizes = sorted({g["batch_size"] for g in groups})
    norms = sorted({g["norm"] for g in groups}, key=_norm_rank)
    cell = {(g["norm"], g["batch_size"]): g for g in groups}
    return sizes, [(n, [_cell(cell.get((n, b))) for b in sizes]) for n in norms]


def print_tables(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for (model, variant), groups in _experiments(summary).items():
        sizes, rows = table_rows(groups)
        console.print(
            f"[bold]{model}{' ' + variant if variant else ''}[/]: final validation error % by batch size "
            "(mean ± std over seeds)",
            highlight=False,
        )
        table = Table()
        table.add_column("norm")
        for b in sizes:
            table.add_column(f"B={b}", justify="right")
        for norm, cells in rows:
            table.add_row(norm, *(f"[red]{c}[/]" if c.startswith("not completed") else c for c in cells))
        console.print(table)
    failed = [r for r in summary["runs"] if r["status"] != R.COMPLETED]
    for r in failed:
        reason = f": {escape(r['reason'])}" if r["reason"] else ""  # a command's [list] is no markup
        console.print(f"[red]{r['status']}[/] {r['run']}{reason}", highlight=False)
    for r in summary.get("unreadable", []):
        console.print(f"[bold red]unreadable[/] {r['run']}: {r['reason']}", highlight=False, soft_wrap=True)


def _suffix(i: int, n: int) -> str:
    return f"_{i + 1}" if n > 1 else ""


def make_figures(summary: dict[str, Any], out_dir: Path, reference: Reference | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    experiments = _experiments(summary)
    norms = sorted({g["norm"] for g in summary["groups"]}, key=_norm_rank)
    colors = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(norms)}
    for i, ((model, variant), groups) in enumerate(experiments.items()):
        label = f"{model}{', ' + variant if variant else ''}"
        # Validation error against batch size.
        fig, axes = plt.subplots(1, 2 if reference else 1, figsize=(12 if reference else 6.4, 4.4), squeeze=False)
        ax = axes[0][0]
        for norm in sorted({g["norm"] for g in groups}, key=_norm_rank):
            pts = sorted((g["batch_size"], g) for g in groups if g["norm"] == norm and g["val_err_mean"] is not None)
            if not pts:
                continue
            xs = [b for b, _ in pts]
            ys = [100 * g["val_err_mean"] for _, g in pts]
            es = [100 * g["val_err_std"] for _, g in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=norm, color=colors[norm])
        ax.set_xscale("log", base=2)
        sizes = sorted({g["batch_size"] for g in groups})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel("final validation error (%)")
        ax.set_title(f"Validation error vs batch size — {label}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no line while no run has completed (a report during a sweep)
            ax.legend()
        if reference:
            _draw_reference(axes[0][1], reference, colors, plt)
        fig.tight_layout()
        path = out_dir / f"error_vs_batch{_suffix(i, len(experiments))}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
        paths.append(
            _curves_figure(
                plt,
                summary,
                model,
                variant,
                sizes,
                colors,
                label,
                out_dir / f"curves{_suffix(i, len(experiments))}.png",
            )
        )
    return paths


def _draw_reference(ax: Any, reference: Reference, colors: dict[str, Any], plt: Any) -> None:
    """The published points in their own panel beside the user's (their scale is another dataset's)."""
    for k, norm in enumerate(sorted(reference.points, key=_norm_rank)):
        sizes, means, stds = reference.error_curve(norm)
        color = colors.get(norm, plt.get_cmap("tab10")(len(colors) + k))
        ax.errorbar(sizes, means, yerr=stds, marker="s", ls="--", mfc="none", capsize=3, label=norm, color=color)
    ax.set_xscale("log", base=2)
    sizes = sorted({b for by_batch in reference.points.values() for b in by_batch})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel(f"published error (%), {'100 − accuracy' if reference.metric == 'accuracy' else 'as reported'}")
    ax.set_title(f"Published: {reference.title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title=f"--reference {reference.name}", fontsize=8)


def _curves_figure(
    plt: Any,
    summary: dict[str, Any],
    model: str,
    variant: str,
    sizes: list[int],
    colors: dict[str, Any],
    label: str,
    path: Path,
) -> Path:
    cols = min(4, len(sizes))
    rows = math.ceil(len(sizes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, sharey=True)
    runs = [r for r in summary["runs"] if r["model"] == model and r["variant"] == variant]
    for ax, b in zip(axes.flat, sizes, strict=False):
        shown: set[str] = set()
        for r in runs:
            if r["batch_size"] != b or not r["history"]:
                continue
            color = colors[r["norm"]]
            name = None if r["norm"] in shown else r["norm"]
            shown.add(r["norm"])
            if r["curve"]:
                ax.plot(
                    [p[0] for p in r["curve"]], [p[1] for p in r["curve"]], color=color, lw=1, alpha=0.8, label=name
                )
            ax.plot(
                [h.examples for h in r["history"]],
                [h.val_loss for h in r["history"]],
                color=color,
                ls="--",
                marker=".",
                lw=1.2,
            )
        ax.set_title(f"B={b}")
        ax.set_xlabel("examples seen")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(sizes) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("loss (train solid, val dashed)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Loss curves — {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(summary: dict[str, Any], figures: list[Path], reference: Reference | None = None) -> str:
    lines = [f"# normbench report: `{summary['root']}`", ""]
    n_done = sum(r["status"] == R.COMPLETED for r in summary["runs"])
    lines += [
        f"{len(summary['runs'])} runs, {n_done} completed. Cells: final validation error % "
        "(mean ± std over seeds where there are several).",
        "",
    ]
    for (model, variant), groups in _experiments(summary).items():
        sizes, rows = table_rows(groups)
        lines += [
            f"## {model}{' (' + variant + ')' if variant else ''}",
            "",
            "| norm | " + " | ".join(f"B={b}" for b in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        lines += [f"| {norm} | " + " | ".join(cells) + " |" for norm, cells in rows]
        lines.append("")
    for path in figures:
        lines += [f"![{path.stem}]({path.name})", ""]
    if reference:
        lines += [
            f"## Published reference: {reference.title}",
            "",
            f"Drawn beside the error-vs-batch figure (`--reference {reference.name}`). Source: {reference.citation} "
            f"<{reference.url}>. Setting: {reference.setting}.",
            "",
        ]
    failed = [r for r in summary["runs"] if r["status"] != R.COMPLETED]
    if failed:
        lines += ["## Runs that did not complete", ""]
        lines += [f"- `{r['run']}`: **{r['status']}** — {r['reason'] or 'no reason recorded'}" for r in failed]
        lines.append("")
    lines += [f"- `{r['run']}`: **unreadable** — {r['reason']}" for r in summary.get("unreadable", [])]
    return "\n".join(lines)


def write_report(
    root: Path, reference: Reference | None = None, out: Path | None = None, summary: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[Path], Path]:
    """Summary files, figures and report.md in `out` (default: `root`); returns (summary, figures, report path)."""
    root = root.resolve()
    out = (out or root).resolve()
    summary = write_summary(root, out, summary)
    figures = make_figures(summary, out, reference)
    path = out / "report.md"
    path.write_text(markdown(summary, figures, reference))
    return summary, figures, path
