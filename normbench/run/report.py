"""`normbench report DIR`: the comparison you look at.

Reads every `results.json` under DIR (one run, a sweep, or a partial sweep), groups runs that differ only
by seed, and writes next to them:

* `summary.csv` (one row per run, every field of its record) and `summary.json` (runs, seed-aggregated cells,
  paired differences against BN, the settings),
* `error_vs_batch.png`: final validation error against images per worker (BN's batch) on a log₂ axis, one line
  per norm, mean and 95% interval over seeds (the GroupNorm paper's Figure 1), chance drawn, flagged runs hollow,
* `curves.png`: train (solid) and validation (dashed) loss against examples seen, one panel per images per worker,
  one colour per norm, so different splits are compared at equal data seen,
* `report.md`: the settings, the tables, the paired differences, BN's three evaluations, flags and warnings, and
  both figures: a sweep's outcome is one file to open.

The x axis is images per worker = batch_size / workers: the batch one BN layer normalizes over. With one worker
it is the batch size. A norm whose statistics do not depend on the split (ln, in, gn: per sample) trained at one
worker is drawn at every x that has its total batch, and marked so: it is the same run there. A norm is named as the
run compared it: `gn+ws` where the model had Weight Standardization on (a conv option, parts/models/convs.py).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from normbench.base.errors import ConfigError
from normbench.base.files import write_atomic, write_json
from normbench.base.overrides import parse
from normbench.parts.models.convs import base_norm, compared
from normbench.parts.norms import NORMS
from normbench.plan.schema import VOLATILE
from normbench.run import record as R
from normbench.run.record import RunRecord, UnreadableRecord, find_records
from normbench.run.references import Reference
from normbench.run.stats import interval

# What a table shows; the rest of a run's overrides is its "variant". `cell` is the config group of the presets
# whose options are the compared cells (bn at each worker split, ln, in, gn): configs/cell/.
AXES = ("model", "norm", "batch_size", "seed", "workers", "cell")
# Training-loss curves are smoothed by a moving average over this many logged points (1 = raw); `--smooth`.
SMOOTH = 5
BASELINE = "bn"  # paired differences are taken against it
# Record fields that are not one value per run: the figures read history and curve, the settings read config.
BULKY = ("metrics", "budget", "history", "curve", "config", "hparams")
# First columns of summary.csv, then every metric and every other field of the record, in the record's order.
LEAD = ("run", "status", "flags", "model", "norm", "batch_size", "workers", "images_per_worker", "seed", "variant")


def run_columns() -> list[str]:
    """summary.csv's columns: derived from the record's dataclasses (one statement of the fields), metrics and
    the budget flattened, val_err added next to val_acc."""
    metrics = [f.name for f in fields(R.Metrics)]
    metrics.insert(metrics.index("val_acc") + 1, "val_err")
    scalars = [f.name for f in fields(RunRecord) if f.name not in BULKY]
    budget = [f"budget_{f.name}" for f in fields(R.Budget)]
    return list(dict.fromkeys([*LEAD, *metrics, *scalars, *budget]))


def _overrides(run_dir: Path) -> list[str]:
    try:
        return list(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


def _variant_overrides(run_dir: Path) -> list[str]:
    """The run's overrides of keys other than the table's axes, the volatile ones and Hydra's own."""
    overrides = _overrides(run_dir)
    keys = [o.key_or_group for o in parse(overrides)]
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
    """One flat row per readable run under `root` (every field of its record, plus its history, curve and config
    for the figures and settings), sorted by model, variant, norm, images per worker, seed. Unreadable records are
    not rows: `unreadable` lists them."""
    if not root.exists():
        raise ConfigError(f"{root} does not exist: give a run or sweep directory (it holds results.json files).")
    everything = list(find_records(root))
    trials = studies(root)  # an Optuna study's trials are summed up by `tuned`, not drawn as grid cells
    found = [(d, r) for d, r in everything if isinstance(r, RunRecord) and not _inside(d, trials)]
    if not found and trials:
        found = [(d, r) for d, r in everything if isinstance(r, RunRecord)]
    if not found:
        bad = f" ({len(everything)} results.json there, none readable as a record)" if everything else ""
        raise ConfigError(f"No normbench record under {root}{bad}: give a run or sweep directory written by normbench.")
    extra = {d: _variant_overrides(d) for d, _ in found}
    common = set.intersection(*(set(v) for v in extra.values())) if extra else set()
    rows = [_row(_run_name(root, d), rec, ",".join(o for o in extra[d] if o not in common)) for d, rec in found]
    return sorted(rows, key=_order)


def _order(r: dict[str, Any]) -> tuple[Any, ...]:
    return (str(r["model"]), r["variant"], _norm_rank(r["norm"]), r["images_per_worker"] or 0, r["batch_size"] or 0,
            r["seed"] or 0)  # fmt: skip


def _row(name: str, rec: RunRecord, variant: str) -> dict[str, Any]:
    row: dict[str, Any] = {f.name: getattr(rec, f.name) for f in fields(RunRecord) if f.name not in BULKY}
    row |= {f.name: getattr(rec.metrics, f.name) for f in fields(R.Metrics)}
    row |= {f"budget_{f.name}": getattr(rec.budget, f.name) if rec.budget else None for f in fields(R.Budget)}
    completed = rec.status == R.COMPLETED
    workers = rec.workers or 1  # records from before workers: one
    row |= {
        "run": name,
        "norm": _compared(rec),
        "variant": variant,
        "val_acc": rec.metrics.val_acc if completed else None,
        "val_err": 1 - rec.metrics.val_acc if completed and rec.metrics.val_acc is not None else None,
        "workers": workers,
        "images_per_worker": rec.batch_size // workers if rec.batch_size else None,
        "history": rec.history,
        "curve": rec.curve,
        "config": rec.config,
    }
    return row


STUDY_FILE = "optimization_results.yaml"  # what Hydra's Optuna sweeper writes into a study's sweep directory


def studies(root: Path) -> list[Path]:
    """The Optuna studies under `root` (`sweep=tune_lr`): directories holding optimization_results.yaml."""
    return sorted(path.parent for path in root.rglob(STUDY_FILE))


def _inside(run_dir: Path, dirs: list[Path]) -> bool:
    return any(run_dir == d or d in run_dir.parents for d in dirs)


def tuned(root: Path) -> list[dict[str, Any]]:
    """One row per Optuna study under `root`: its cell (norm, total batch, workers, images per worker), the best
    lr and the best trial's final validation error and flags, and how many trials completed."""
    out = []
    for study in studies(root):
        try:
            best = yaml.safe_load((study / STUDY_FILE).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        runs = [r for _, r in find_records(study) if isinstance(r, RunRecord)]
        done = [r for r in runs if r.status == R.COMPLETED and r.metrics.val_acc is not None]
        if not done:
            continue
        top = max(done, key=lambda r: r.metrics.val_acc or 0.0)
        out.append(
            {
                "study": _run_name(root, study),
                "norm": _compared(top),
                "batch_size": top.batch_size,
                "workers": top.workers or 1,
                "images_per_worker": top.images_per_worker or top.batch_size,
                "best_lr": (best.get("best_params") or {}).get("optim.lr", top.config.get("optim", {}).get("lr")),
                "best_val_err": 1 - (top.metrics.val_acc or 0.0),
                "flags": sorted(top.flags),
                "trials": len(done),
                "seed": top.seed,
            }
        )
    return sorted(out, key=lambda t: (_norm_rank(t["norm"]), t["images_per_worker"] or 0))


def _compared(rec: RunRecord) -> str | None:
    """The norm as the run compared it: its name, with the conv option its model had on (`gn+ws`: models/convs.py),
    so that gn and gn + ws are two cells of a table even where one sweep cell set `model.ws`."""
    model = (rec.config or {}).get("model")
    return compared(rec.norm, model) if rec.norm and isinstance(model, dict) else rec.norm


def _norm_rank(norm: str | None) -> tuple[int, str]:
    order = list(NORMS)  # registration order; `gn+ws` right after gn
    base = base_norm(str(norm))
    return (order.index(base) if base in order else len(order), str(norm))


def split_free(norm: str | None) -> bool:
    """Whether the norm's training statistics do not depend on how the batch is split among workers: per-sample
    norms (ln, in, gn, rms, frn, evonorm_s0, none; with a conv option or not) and statistics synced over all
    workers."""
    spec = NORMS.get(base_norm(str(norm)))
    return spec is not None and (not spec.batch_statistics or spec.synced)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that differ only by seed, as one cell: mean and 95% interval (Student t) of the final validation error,
    the error per seed (for paired differences) and the flagged runs."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["variant"], row["norm"], row["batch_size"], row["workers"])].append(row)
    out = []
    for (model, variant, norm, batch_size, workers), members in groups.items():
        done = [r for r in members if r["val_err"] is not None]
        errors = [r["val_err"] for r in done]
        spread = interval(errors) if errors else None
        out.append(
            {
                "model": model,
                "variant": variant,
                "norm": norm,
                "batch_size": batch_size,
                "workers": workers,
                "images_per_worker": members[0]["images_per_worker"],
                "runs": len(members),
                "completed": len(errors),
                "not_completed": {r["run"]: r["status"] for r in members if r["val_err"] is None},
                "seeds": sorted(r["seed"] for r in members if r["seed"] is not None),
                "val_err_by_seed": {r["seed"]: r["val_err"] for r in done},
                "val_err_mean": spread.mean if spread else None,
                "val_err_half": spread.half if spread else None,  # 95% interval: mean ± half; None for one seed
                "val_err_std": statistics.stdev(errors) if len(errors) > 1 else (0.0 if errors else None),
                "flagged": {r["run"]: sorted(r["flags"]) for r in members if r["flags"]},
                "chance": 1 / members[0]["num_classes"],
            }
        )
    return out


def cells(groups: list[dict[str, Any]]) -> tuple[list[int], list[tuple[str, list[tuple[dict[str, Any], bool] | None]]]]:
    """One experiment's images-per-worker values and, per norm, its cell at each: (group, drawn_from_one_worker)
    or None. A split-free norm trained at one worker stands at every x whose runs have its total batch."""
    xs = sorted({g["images_per_worker"] for g in groups})
    totals = {x: {g["batch_size"] for g in groups if g["images_per_worker"] == x} for x in xs}
    by_cell = {(g["norm"], g["images_per_worker"]): g for g in groups}
    out = []
    for norm in sorted({g["norm"] for g in groups}, key=_norm_rank):
        line: list[tuple[dict[str, Any], bool] | None] = []
        one_worker = {g["batch_size"]: g for g in groups if g["norm"] == norm and g["workers"] == 1}
        for x in xs:
            if (norm, x) in by_cell:
                line.append((by_cell[(norm, x)], False))
            elif split_free(norm) and len(totals[x]) == 1 and next(iter(totals[x])) in one_worker:
                line.append((one_worker[next(iter(totals[x]))], True))
            else:
                line.append(None)
        out.append((norm, line))
    return xs, out


def paired(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per images-per-worker value, each norm's error minus BN's on the same seeds: mean, 95% interval, n, and
    whether the interval excludes 0 ("bn better" / "NORM better") or not ("not distinguishable")."""
    xs, lines = cells(groups)
    by_norm = dict(lines)
    if BASELINE not in by_norm:
        return []
    out = []
    for i, x in enumerate(xs):
        base = by_norm[BASELINE][i]
        if base is None:
            continue
        for norm, line in lines:
            if norm == BASELINE or line[i] is None:
                continue
            mine, theirs = line[i][0]["val_err_by_seed"], base[0]["val_err_by_seed"]
            seeds = sorted(set(mine) & set(theirs))
            if not seeds:
                continue
            diff = interval([mine[s] - theirs[s] for s in seeds])
            if diff.half is None:
                verdict = "one seed: no interval"
            elif diff.excludes_zero():
                verdict = f"{norm if diff.mean < 0 else BASELINE} better"
            else:
                verdict = "not distinguishable"
            if line[i][0]["flagged"] or base[0]["flagged"]:
                verdict += " (flagged runs in the pair)"
            out.append({"images_per_worker": x, "norm": norm, "seeds": seeds, "n": diff.n, "diff_mean": diff.mean,
                        "diff_half": diff.half, "verdict": verdict})  # fmt: skip
    return out


def settings(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What the runs were: (setting, value), the distinct values listed where runs differ."""

    def values(get: Any) -> str:
        found = list(dict.fromkeys(str(v) for v in (get(r) for r in rows) if v is not None))
        return ", ".join(found) if len(found) < 8 else f"{', '.join(found[:7])}, … ({len(found)} values)"

    def key(*paths: str) -> Any:
        """The config's value at the first of `paths` that is set (`data.subset`, else `data.train_size`)."""

        def get(r: dict[str, Any]) -> Any:
            for path in paths:
                node: Any = r["config"]
                for part in path.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node is not None:
                    return node
            return None

        return get

    def steps(r: dict[str, Any]) -> int | None:
        return r["steps"] if r["val_err"] is not None else None

    def lr(r: dict[str, Any]) -> str | None:
        return None if r["effective_lr"] is None else f"{r['effective_lr']:.4g}"

    milestones = values(key("optim.milestones"))
    step = any(key("optim.schedule")(r) == "step" for r in rows)
    return [
        ("data", f"{values(key('data.name'))} (generator {values(key('data.generator'))}, difficulty "
                 f"{values(key('data.difficulty'))}, augment {values(key('data.augment'))})"),
        ("training / validation images",
         f"{values(key('data.subset', 'data.train_size'))} / {values(key('data.val_subset', 'data.val_size'))}"),
        ("model", values(key("model.name"))),
        ("budget", f"{values(key('epochs'))} epochs (budget={values(key('budget'))}), "
                   f"max_steps {values(key('max_steps')) or 'none'}; "
                   f"optimizer steps per completed run: {values(steps)}"),
        ("optimizer", f"{values(key('optim.name'))}, momentum {values(key('optim.momentum'))}, weight decay "
                      f"{values(key('optim.weight_decay'))}"),
        ("learning rate", f"optim.lr {values(key('optim.lr'))} at base batch {values(key('optim.base_batch_size'))}, "
                          f"scaled to the total batch by rule `{values(key('optim.lr_scaling'))}`; effective lr "
                          f"{values(lr)}"),
        ("schedule", f"{values(key('optim.schedule'))}, warm-up {values(key('optim.warmup_steps'))} steps"
                     + (f", ×{values(key('optim.gamma'))} at {milestones} of the steps" if step else "")),
        ("total batch", values(lambda r: r["batch_size"])),
        ("workers", values(lambda r: r["workers"])),
        ("images per worker", values(lambda r: r["images_per_worker"])),
        ("seeds", values(lambda r: r["seed"])),
        ("PreciseBN images", values(lambda r: r["precise_bn_images"])),
        ("device", f"{values(lambda r: r['device'])}, torch {values(lambda r: r['torch'])}"),
    ]  # fmt: skip


def summarize(root: Path) -> dict[str, Any]:
    rows = collect(root)
    groups = aggregate(rows)
    pairs = {f"{m}{' ' + v if v else ''}": paired(g) for (m, v), g in _by_experiment(groups).items()}
    return {"root": str(root), "runs": rows, "groups": groups, "paired": pairs, "settings": settings(rows),
            "tuned": tuned(root), "unreadable": unreadable(root)}  # fmt: skip


def _csv_value(value: Any) -> Any:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return value


def write_summary(root: Path, out: Path | None = None, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.csv and summary.json of the runs under `root` (or the `summary` already made of them), written into
    `out` (default: `root`)."""
    summary = summary or summarize(root)
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    columns = run_columns()

    def write_csv(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _csv_value(r.get(k)) for k in columns} for r in summary["runs"])

    # Atomic like every record: two sweeps into one directory, or a report during a sweep, may write it at once.
    write_atomic(out / "summary.csv", write_csv)
    compact = {**summary, "runs": [{k: r.get(k) for k in columns} for r in summary["runs"]]}
    write_json(out / "summary.json", compact)
    return summary


def _by_experiment(groups: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Groups by (model, variant): each is one table and one figure."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for g in groups:
        out[(g["model"], g["variant"])].append(g)
    return out


def _experiments(summary: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return _by_experiment(summary["groups"])


def _cell(found: tuple[dict[str, Any], bool] | None) -> str:
    if found is None:
        return ""
    g, one_worker = found
    if g["val_err_mean"] is None:
        return "not completed: " + ", ".join(sorted(set(g["not_completed"].values())))  # e.g. still running
    text = f"{100 * g['val_err_mean']:.1f}"
    if g["val_err_half"] is not None:
        text += f" ± {100 * g['val_err_half']:.1f} (n={g['completed']})"
    if one_worker:
        text += " †"
    if g["not_completed"]:
        text += f" ({len(g['not_completed'])} not completed)"
    flags = sorted({f for names in g["flagged"].values() for f in names})
    if flags:
        text += f" ({len(g['flagged'])}/{g['runs']} {', '.join(flags)})"
    return text


def table_rows(groups: list[dict[str, Any]]) -> tuple[list[int], list[tuple[str, list[str]]]]:
    """Norms × images per worker of one experiment as text cells: final val error % (mean ± 95% interval)."""
    xs, lines = cells(groups)
    return xs, [(norm, [_cell(c) for c in line]) for norm, line in lines]


def _split(groups: list[dict[str, Any]], x: int) -> str:
    """`B=32, W=16`: the total batch and workers of the runs at x (BN's, where the others stand at every x)."""
    at = [g for g in groups if g["images_per_worker"] == x]
    split = sorted({(g["batch_size"], g["workers"]) for g in at})
    return "; ".join(f"B={b}, W={w}" for b, w in split)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


NOTES = (
    "Cells: final validation error %, mean ± half-width of the 95% interval over n seeds (Student t); a single seed "
    "shows its value alone. x: images per worker (the batch one BN layer normalizes over); B = total batch, "
    "W = workers."
)
ONE_WORKER = (
    "†: a norm whose statistics do not depend on the split (per sample) trained once per seed at one worker; the "
    "same runs stand at every x with that total batch."
)


def print_tables(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for (model, variant), groups in _experiments(summary).items():
        xs, rows = table_rows(groups)
        console.print(
            f"[bold]{model}{' ' + variant if variant else ''}[/]: final validation error % by images per worker "
            "(mean ± 95% interval over seeds)",
            highlight=False,
        )
        table = Table()
        table.add_column("norm")
        for x in xs:
            table.add_column(f"{x}/worker\n{_split(groups, x)}", justify="right")
        for norm, texts in rows:
            marked = (c.startswith("not completed") or R.DID_NOT_LEARN in c or R.NOT_CONVERGED in c for c in texts)
            table.add_row(norm, *(f"[red]{c}[/]" if red else c for c, red in zip(texts, marked, strict=True)))
        console.print(table)
        if any("†" in c for _, texts in rows for c in texts):
            console.print(ONE_WORKER, highlight=False)
        key = f"{model}{' ' + variant if variant else ''}"
        for p in summary["paired"].get(key, []):
            if p["diff_half"] is not None:
                console.print(
                    f"  {p['images_per_worker']}/worker: {p['norm']} − {BASELINE} = {100 * p['diff_mean']:+.1f} ± "
                    f"{100 * p['diff_half']:.1f} points (n={p['n']}): {p['verdict']}",
                    highlight=False,
                )
    flagged = [r for r in summary["runs"] if r["flags"]]
    for r in flagged:
        console.print(
            f"[bold red]{', '.join(r['flags'])}[/] {r['run']}: {'; '.join(r['flags'].values())}", highlight=False
        )
    failed = [r for r in summary["runs"] if r["status"] != R.COMPLETED]
    for r in failed:
        reason = f": {escape(r['reason'])}" if r["reason"] else ""  # a command's [list] is no markup
        console.print(f"[red]{r['status']}[/] {r['run']}{reason}", highlight=False)
    for r in summary.get("unreadable", []):
        console.print(f"[bold red]unreadable[/] {r['run']}: {r['reason']}", highlight=False, soft_wrap=True)


def flagged_count(summary: dict[str, Any]) -> dict[str, int]:
    """{flag: runs carrying it} over the summary's runs."""
    counts: dict[str, int] = defaultdict(int)
    for r in summary["runs"]:
        for flag in r["flags"]:
            counts[flag] += 1
    return dict(counts)


def _suffix(i: int, n: int) -> str:
    return f"_{i + 1}" if n > 1 else ""


def make_figures(
    summary: dict[str, Any], out_dir: Path, reference: Reference | None = None, smooth: int = SMOOTH
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    experiments = _experiments(summary)
    norms = sorted({g["norm"] for g in summary["groups"]}, key=_norm_rank)
    colors = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(norms)}
    for i, ((model, variant), groups) in enumerate(experiments.items()):
        label = f"{model}{', ' + variant if variant else ''}"
        fig, axes = plt.subplots(1, 2 if reference else 1, figsize=(13 if reference else 7.5, 5), squeeze=False)
        ax = axes[0][0]
        _draw_errors(ax, groups, colors)
        totals = sorted({g["batch_size"] for g in groups})
        workers = sorted({g["workers"] for g in groups})
        ax.set_title(f"Validation error vs images per worker — {label}\ntotal batch {', '.join(map(str, totals))}; "
                     f"workers {', '.join(map(str, workers))}", fontsize=10)  # fmt: skip
        if reference:
            _draw_reference(axes[0][1], reference, colors, plt)
        fig.tight_layout()
        path = out_dir / f"error_vs_batch{_suffix(i, len(experiments))}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
        curves = out_dir / f"curves{_suffix(i, len(experiments))}.png"
        paths.append(_curves_figure(plt, summary, groups, colors, label, curves, smooth))
    return paths


def _draw_errors(ax: Any, groups: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    """Mean error per norm and x with its 95% interval (no bar for one seed); hollow where a run is flagged;
    a split-free norm drawn from one worker dashed; chance as a grey line."""
    from matplotlib.lines import Line2D

    xs, lines = cells(groups)
    for norm, line in lines:
        pts = [(x, c[0], c[1]) for x, c in zip(xs, line, strict=True) if c and c[0]["val_err_mean"] is not None]
        if not pts:
            continue
        color = colors[norm]
        one_worker = any(w for _, _, w in pts)  # the same runs drawn at every x
        ax.plot([x for x, _, _ in pts], [100 * g["val_err_mean"] for _, g, _ in pts], color=color,
                ls="--" if one_worker else "-", lw=1.5)  # fmt: skip
        for x, g, _ in pts:
            y = 100 * g["val_err_mean"]
            if g["val_err_half"] is not None:
                ax.errorbar([x], [y], yerr=[100 * g["val_err_half"]], color=color, capsize=3, lw=1, ls="none")
            hollow = bool(g["flagged"])
            ax.plot([x], [y], marker="o", ms=7, color=color, mfc="white" if hollow else color, ls="none")
    chance = groups[0]["chance"]
    ax.axhline(100 * (1 - chance), color="grey", ls=":", lw=1.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("images per worker (the batch one BN layer normalizes over)")
    ax.set_ylabel("final validation error (%), mean and 95% interval")
    ax.grid(alpha=0.3)
    handles = []
    for norm, line in lines:
        drawn = [c for c in line if c and c[0]["val_err_mean"] is not None]
        if drawn:
            tag = " (1 worker, same runs at every x)" if any(c[1] for c in drawn) else ""
            handles.append(Line2D([], [], color=colors[norm], marker="o", ls="--" if tag else "-", label=norm + tag))
    handles.append(Line2D([], [], color="grey", ls=":", label=f"chance ({100 * (1 - chance):.0f}% error)"))
    if any(c and c[0]["flagged"] for _, line in lines for c in line):  # the key only where it explains a point
        hollow = Line2D([], [], color="black", marker="o", mfc="white", ls="none", label="flagged run in the cell")
        handles.append(hollow)
    ax.legend(handles=handles, fontsize=8)


def _draw_reference(ax: Any, reference: Reference, colors: dict[str, Any], plt: Any) -> None:
    """The published points in their own panel beside the user's (their scale is another dataset's)."""
    for k, norm in enumerate(sorted(reference.points, key=_norm_rank)):
        sizes, means, stds = reference.error_curve(norm)
        color = colors.get(norm, plt.get_cmap("tab10")(len(colors) + k))
        ax.errorbar(sizes, means, yerr=stds, marker="s", ls="--", mfc="none", capsize=3, label=norm, color=color)
    ax.set_xscale("log", base=2)
    sizes = sorted({b for by_batch in reference.points.values() for b in by_batch})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("images per GPU")
    ax.set_ylabel(f"published error (%), {'100 − accuracy' if reference.metric == 'accuracy' else 'as reported'}")
    ax.set_title(f"Published: {reference.title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title=f"--reference {reference.name}", fontsize=8)


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _curves_figure(
    plt: Any,
    summary: dict[str, Any],
    groups: list[dict[str, Any]],
    colors: dict[str, Any],
    label: str,
    path: Path,
    smooth: int,
) -> Path:
    xs, lines = cells(groups)
    cols = min(4, len(xs))
    rows = math.ceil(len(xs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows), squeeze=False, sharey=True)
    by_run = {r["run"]: r for r in summary["runs"]}
    for i, (ax, x) in enumerate(zip(axes.flat, xs, strict=False)):
        for norm, line in lines:
            if line[i] is None:
                continue
            g, one_worker = line[i]
            members = [
                r
                for r in by_run.values()
                if r["model"] == g["model"]
                and r["variant"] == g["variant"]
                and r["norm"] == norm
                and r["batch_size"] == g["batch_size"]
                and r["workers"] == g["workers"]
            ]
            for k, r in enumerate(members):
                if not r["history"]:
                    continue
                name = (norm + (" (1 worker)" if one_worker else "")) if k == 0 else None
                if r["curve"]:
                    loss = smoothed([p[1] for p in r["curve"]], smooth)
                    ax.plot([p[0] for p in r["curve"]], loss, color=colors[norm], lw=1.1, alpha=0.8, label=name)
                ax.plot([h.examples for h in r["history"]], [h.val_loss for h in r["history"]], color=colors[norm],
                        ls="--", marker=".", lw=1.2)  # fmt: skip
        ax.set_title(f"{x} images per worker ({_split(groups, x)})", fontsize=10)
        ax.set_xlabel("examples seen")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(xs) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("loss (train solid, val dashed)")
    fig.suptitle(f"Loss curves — {label} (train loss: moving average over {smooth} logged points)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def markdown(summary: dict[str, Any], figures: list[Path], reference: Reference | None = None) -> str:
    runs = summary["runs"]
    lines = [f"# normbench report: `{summary['root']}`", ""]
    n_done = sum(r["status"] == R.COMPLETED for r in runs)
    counts = flagged_count(summary)
    flagged = ", ".join(f"{_plural(n, 'run')} {flag}" for flag, n in counts.items()) or "none"
    lines += [f"{_plural(len(runs), 'run')}, {n_done} completed. Flagged: {flagged}.", "", NOTES, ""]
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["settings"]]
    lines.append("")
    for (model, variant), groups in _experiments(summary).items():
        xs, rows = table_rows(groups)
        lines += [
            f"## {model}{' (' + variant + ')' if variant else ''}",
            "",
            "| norm | " + " | ".join(f"{x}/worker" for x in xs) + " |",
            "|---|" + "---:|" * len(xs),
            "| *split* | " + " | ".join(_split(groups, x) for x in xs) + " |",
        ]
        lines += [f"| {norm} | " + " | ".join(texts) + " |" for norm, texts in rows]
        lines.append("")
        if any("†" in c for _, texts in rows for c in texts):
            lines += [ONE_WORKER, ""]
        pairs = summary["paired"].get(f"{model}{' ' + variant if variant else ''}", [])
        if pairs:
            lines += [
                f"Paired differences against {BASELINE} (same seeds): error of the norm − error of {BASELINE}, "
                "points, mean ± 95% interval.",
                "",
                "| images per worker | norm | difference | n | reading |",
                "|---:|---|---:|---:|---|",
            ]
            for p in pairs:
                diff = f"{100 * p['diff_mean']:+.1f}" + (
                    f" ± {100 * p['diff_half']:.1f}" if p["diff_half"] is not None else ""
                )
                lines.append(f"| {p['images_per_worker']} | {p['norm']} | {diff} | {p['n']} | {p['verdict']} |")
            lines.append("")
    lines += _tuned_lines(summary)
    for path in figures:
        lines += [f"![{path.stem}]({path.name})", ""]
    bn_runs = [r for r in runs if r["val_acc_batch_stats"] is not None or r["val_acc_precise_bn"] is not None]
    if bn_runs:
        lines += [
            "## BN's three evaluations (validation accuracy %)",
            "",
            "Running statistics (the reported number), the batch statistics of batches of images-per-worker "
            "images, and PreciseBN statistics re-estimated from training images.",
            "",
            "| run | running stats | batch stats | PreciseBN | PreciseBN images |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| `{r['run']}` | {_pct(r['val_acc'])} | {_pct(r['val_acc_batch_stats'])} | "
            f"{_pct(r['val_acc_precise_bn'])} | {r['precise_bn_images'] or ''} |"
            for r in bn_runs
        ]
        lines.append("")
    flagged_runs = [r for r in runs if r["flags"]]
    if flagged_runs:
        lines += ["## Flagged runs", "", "Their numbers are in the tables, marked; they are not the norm's result.", ""]
        lines += [
            f"- `{r['run']}`: " + "; ".join(f"**{k}** — {v}" for k, v in r["flags"].items()) for r in flagged_runs
        ]
        lines.append("")
    warned: dict[str, list[str]] = defaultdict(list)
    for r in runs:
        for w in r["warnings"]:
            warned[w].append(r["run"])
    if warned:
        lines += ["## Warnings the records carry", ""]
        lines += [f"- {w} ({_plural(len(names), 'run')}: {', '.join(f'`{n}`' for n in names[:6])}"
                  f"{', …' if len(names) > 6 else ''})" for w, names in warned.items()]  # fmt: skip
        lines.append("")
    if reference:
        lines += [
            f"## Published reference: {reference.title}",
            "",
            f"Drawn beside the error-vs-batch figure (`--reference {reference.name}`). Source: {reference.citation} "
            f"<{reference.url}>. Setting: {reference.setting}.",
            "",
        ]
    failed = [r for r in runs if r["status"] != R.COMPLETED]
    if failed:
        lines += ["## Runs that did not complete", ""]
        lines += [f"- `{r['run']}`: **{r['status']}** — {r['reason'] or 'no reason recorded'}" for r in failed]
        lines.append("")
    lines += [f"- `{r['run']}`: **unreadable** — {r['reason']}" for r in summary.get("unreadable", [])]
    return "\n".join(lines)


def _tuned_lines(summary: dict[str, Any]) -> list[str]:
    """The tuned-lr table: per cell, the best lr of its Optuna study and its error, beside the grid's error at the
    fixed lr for the same cell (mean over the grid's seeds, and its run at the study's seed: the like-for-like
    number, since a study tunes on one seed), where the report holds that grid too."""
    if not summary.get("tuned"):
        return []
    grid = {(g["norm"], g["images_per_worker"]): g for g in summary["groups"] if g["val_err_mean"] is not None}
    fixed = {}
    for (_, _), groups in _experiments(summary).items():
        xs, lines = cells(groups)
        for norm, line in lines:
            for x, c in zip(xs, line, strict=True):
                if c and c[0]["val_err_mean"] is not None:
                    fixed.setdefault((norm, x), c[0])
    lines = [
        "## Tuned learning rates (one Optuna study per cell)",
        "",
        "Each cell's own best lr (`sweep=tune_lr`, seed 0, final validation accuracy maximized) beside the "
        "fixed-lr grid's error for that cell: the mean over the grid's seeds, and the grid's run at the study's seed "
        "(the same initialization and data order; the best of a study's trials is an optimistic estimate).",
        "",
        "| norm | images per worker | split | best lr | error at best lr (%) | trials | fixed-lr grid error (%) "
        "| fixed lr, same seed (%) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for t in summary["tuned"]:
        g = fixed.get((t["norm"], t["images_per_worker"])) or grid.get((t["norm"], t["images_per_worker"]))
        same_seed = g["val_err_by_seed"].get(t["seed"]) if g else None
        flag = f" ({', '.join(t['flags'])})" if t["flags"] else ""
        lr = "" if t["best_lr"] is None else f"{t['best_lr']:.3g}"
        lines.append(
            f"| {t['norm']} | {t['images_per_worker']} | B={t['batch_size']}, W={t['workers']} | {lr} | "
            f"{100 * t['best_val_err']:.1f}{flag} | {t['trials']} | {_pct(g['val_err_mean']) if g else ''} | "
            f"{_pct(same_seed) if same_seed is not None else ''} |"
        )
    return [*lines, ""]


def write_report(
    root: Path,
    reference: Reference | None = None,
    out: Path | None = None,
    summary: dict[str, Any] | None = None,
    smooth: int = SMOOTH,
) -> tuple[dict[str, Any], list[Path], Path]:
    """Summary files, figures and report.md in `out` (default: `root`); returns (summary, figures, report path)."""
    root = root.resolve()
    out = (out or root).resolve()
    summary = write_summary(root, out, summary)
    figures = make_figures(summary, out, reference, smooth)
    path = out / "report.md"
    path.write_text(markdown(summary, figures, reference))
    return summary, figures, path
