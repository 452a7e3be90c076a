"""`normbench report DIR`: the comparison you look at.

Reads every `results.json` under DIR (one run, a sweep, a partial sweep, or a folder of several sweeps), groups
runs that differ only by seed into cells, and writes next to them:

* `summary.csv` (one row per run, every field of its record) and `summary.json` (runs, seed-aggregated cells,
  paired differences against BN, the settings),
* `error_vs_batch.png`: final validation error against images per worker (BN's batch) on a log₂ axis, one line
  per norm, mean and 95% interval over seeds (the GroupNorm paper's Figure 1); its title gives the total batch,
  workers, seeds per cell and lr; chance drawn where it lies near the data (else named in the legend), flagged
  runs hollow,
* `curves.png`: train (solid) and validation (dashed) loss against examples seen, one panel per images per worker,
  one colour per norm: each cell's mean over its seeds, with a band over their range (min to max),
* `table.tex`: the main tables as LaTeX (booktabs), for a paper,
* `report.md`: a one-line reading of the paired differences, the settings, the tables, the paired differences,
  BN's three evaluations, flags and warnings, and both figures: a sweep's outcome is one file to open.

The x axis is images per worker = batch_size / workers: the batch one BN layer normalizes over. With one worker
it is the batch size. A norm whose statistics do not depend on the split (ln, in, gn: per sample) trained at one
worker is drawn at every x that has its total batch, and marked so: it is the same run there. A norm is named as the
run compared it: `gn+ws` where the model had Weight Standardization on (a conv option, parts/models/convs.py).

Several sweeps under DIR: runs with the same model, data and variant (what varies inside a sweep besides the
table's axes) land in one table and figure. Where the sweeps' settings differ (their configs, compared key by
key), each sweep is a series of its own, named by its directory, with what differs; where they do not, their seeds
are pooled.
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
LEAD = ("run", "status", "flags", "model", "norm", "batch_size", "workers", "images_per_worker", "seed", "variant",
        "sweep", "series")  # fmt: skip


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
    sweep = {d: _sweep_of(root, d) for d, _ in found}
    extra = {d: _variant_overrides(d) for d, _ in found}
    fixed: dict[str, set[str]] = {}  # per sweep: the overrides all its runs share (its command's fixed settings)
    for d, _ in found:
        fixed[sweep[d]] = fixed[sweep[d]] & set(extra[d]) if sweep[d] in fixed else set(extra[d])
    rows = [
        _row(_run_name(root, d), rec, ",".join(o for o in extra[d] if o not in fixed[sweep[d]])) | {"sweep": sweep[d]}
        for d, rec in found
    ]
    _name_series(rows)
    return sorted(rows, key=_order)


def _sweep_of(root: Path, run_dir: Path) -> str:
    """The sweep a run belongs to, as its directory below `root` ("" for the runs of `root` itself)."""
    if run_dir == root or run_dir.parent == root:
        return ""
    return str(run_dir.parent.relative_to(root))


# Settings that tell sweeps apart in a report of several: every config key but the table's axes, the norm's own
# options (compared per norm), the run's identity and what does not change the numbers (volatile keys, logging).
NOT_A_SETTING = ("seed", "batch_size", "workers", "model.name", "data.name", "sweep.", "log.", "eval.batch_size",
                 *VOLATILE)  # fmt: skip


def _settings_of(row: dict[str, Any]) -> dict[str, str]:
    """A run's config flattened to `key: value` (norm options under the norm's name: `gn.groups`), without the keys
    that do not tell sweeps apart."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(row["config"], "")
    norm = out.pop("norm.name", row["norm"])
    named = {(f"{norm}.{k[5:]}" if k.startswith("norm.") else k): v for k, v in out.items()}
    return {k: v for k, v in named.items() if not any(k == n or k.startswith(n) for n in NOT_A_SETTING)}


def _name_series(rows: list[dict[str, Any]]) -> None:
    """Several sweeps under one report: runs of one experiment (model, data, the variant that varies inside a sweep)
    from sweeps whose settings differ are drawn and tabled side by side, one series per sweep, named by its
    directory (`series`), with what differs (`series_settings`). Sweeps with the same settings are pooled (more
    seeds of the same cells), unless a cell would hold a seed twice: then they are told apart by directory too."""
    for row in rows:
        row["series"], row["series_settings"] = "", ""
    experiments: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        experiments[(row["model"], row["data"], row["variant"])].append(row)
    for members in experiments.values():
        sweeps = sorted({r["sweep"] for r in members})
        if len(sweeps) < 2:
            continue
        fixed = {}
        for name in sweeps:
            settings = [_settings_of(r) for r in members if r["sweep"] == name]
            values = defaultdict(set)
            for found in settings:
                for k, v in found.items():
                    values[k].add(v)
            fixed[name] = {k: next(iter(v)) for k, v in values.items() if len(v) == 1}
        keys = dict.fromkeys(k for name in sweeps for k in fixed[name])
        differ = [k for k in keys if len({fixed[n][k] for n in sweeps if k in fixed[n]}) > 1]
        seeds = defaultdict(list)
        for r in members:
            seeds[(r["norm"], r["batch_size"], r["workers"])].append(r["seed"])
        if not differ and all(len(v) == len(set(v)) for v in seeds.values()):
            continue  # the same settings: more seeds of the same cells
        for r in members:
            r["series"] = r["sweep"] or "."
            r["series_settings"] = ", ".join(f"{k}={fixed[r['sweep']].get(k, 'varies')}" for k in differ)


def _order(r: dict[str, Any]) -> tuple[Any, ...]:
    return (str(r["model"]), str(r["data"]), r["variant"], r["series"], _norm_rank(r["norm"]),
            r["images_per_worker"] or 0, r["batch_size"] or 0, r["seed"] or 0)  # fmt: skip


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
        # the record's own (its plan's); a record from before workers: its batch, one worker
        "images_per_worker": rec.images_per_worker or rec.batch_size,
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
    return spec is not None and not spec.per_share


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that differ only by seed, as one cell: mean and 95% interval (Student t) of the final validation error,
    the error per seed (for paired differences) and the flagged runs."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        key = (row["model"], row["data"], row["variant"], row["series"], row["norm"], row["batch_size"], row["workers"])
        groups[key].append(row)
    out = []
    for (model, data, variant, series, norm, batch_size, workers), members in groups.items():
        done = [r for r in members if r["val_err"] is not None]
        errors = [r["val_err"] for r in done]
        spread = interval(errors) if errors else None
        out.append(
            {
                "model": model,
                "data": data,
                "variant": variant,
                "series": series,
                "series_settings": members[0]["series_settings"],
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
                "lr": sorted({r["effective_lr"] for r in members if r["effective_lr"] is not None}),
            }
        )
    return out


Cell = tuple[dict[str, Any], bool]  # a group and whether it is drawn from one worker at another x
Line = tuple[str, str, list[Cell | None]]  # norm, series, its cell at each x


def series_of(groups: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One experiment's groups by series (the sweep they come from, where several sweeps' settings differ; "" for
    one sweep), in series order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in sorted(groups, key=lambda g: g["series"]):
        out[g["series"]].append(g)
    return dict(out)


def cells(groups: list[dict[str, Any]]) -> tuple[list[int], list[Line]]:
    """One experiment's images-per-worker values and, per norm of each series, its cell at each: (group,
    drawn_from_one_worker) or None. A split-free norm trained at one worker stands at every x whose runs (of its
    series) have its total batch."""
    xs = sorted({g["images_per_worker"] for g in groups})
    out: list[Line] = []
    for series, members in series_of(groups).items():
        totals = {x: {g["batch_size"] for g in members if g["images_per_worker"] == x} for x in xs}
        by_cell = {(g["norm"], g["images_per_worker"]): g for g in members}
        for norm in sorted({g["norm"] for g in members}, key=_norm_rank):
            line: list[Cell | None] = []
            one_worker = {g["batch_size"]: g for g in members if g["norm"] == norm and g["workers"] == 1}
            for x in xs:
                if (norm, x) in by_cell:
                    line.append((by_cell[(norm, x)], False))
                elif split_free(norm) and len(totals[x]) == 1 and next(iter(totals[x])) in one_worker:
                    line.append((one_worker[next(iter(totals[x]))], True))
                else:
                    line.append(None)
            out.append((norm, series, line))
    return xs, out


def paired(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per series and images-per-worker value, each norm's error minus BN's on the same seeds: mean, 95% interval,
    n, and whether the interval excludes 0 ("bn better" / "NORM better") or not ("not distinguishable")."""
    xs, lines = cells(groups)
    out = []
    for series in series_of(groups):
        mine_lines = [(norm, line) for norm, s, line in lines if s == series]
        by_norm = dict(mine_lines)
        if BASELINE not in by_norm:
            continue
        for i, x in enumerate(xs):
            base = by_norm[BASELINE][i]
            if base is None:
                continue
            for norm, line in mine_lines:
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
                flagged = bool(line[i][0]["flagged"] or base[0]["flagged"])
                if flagged:
                    verdict += " (flagged runs in the pair)"
                out.append({"series": series, "images_per_worker": x, "norm": norm, "seeds": seeds, "n": diff.n,
                            "diff_mean": diff.mean, "diff_half": diff.half, "verdict": verdict,
                            "flagged": flagged})  # fmt: skip
    return out


def experiments(groups: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Groups by experiment (model, data, and the variant that varies inside a sweep), each one table and one
    figure, by label: `cnn`, `cnn (norm.groups=8)`; the data named where the report holds several."""
    keys = list(dict.fromkeys((g["model"], g["data"], g["variant"]) for g in groups))
    several = len({data for _, data, _ in keys}) > 1
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in groups:
        on = f" on {g['data']}" if several else ""
        label = f"{g['model']}{on}" + (f" ({g['variant']})" if g["variant"] else "")
        out[label].append(g)
    return dict(out)


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

    def dataset(r: dict[str, Any]) -> str:
        """`digits (1×8×8, 10 classes)`; synthetic data with its generator and difficulty."""
        data = r["config"].get("data") or {}
        name = r["data"] or data.get("name")
        shape = f"{'×'.join(map(str, r['image']))}, {r['num_classes']} classes" if r.get("image") else None
        made = [f"{k} {data[k]}" for k in ("generator", "difficulty") if k in data] if name == "synthetic" else []
        return f"{name} ({', '.join(filter(None, [shape, *made]))})" if shape or made else str(name)

    def images(r: dict[str, Any]) -> str | None:
        if r.get("images"):
            return " / ".join(map(str, r["images"]))
        train, val = key("data.subset", "data.train_size")(r), key("data.val_subset", "data.val_size")(r)
        return f"{train} / {val}" if train is not None and val is not None else None

    milestones = values(key("optim.milestones"))
    step = any(key("optim.schedule")(r) == "step" for r in rows)
    return [
        ("data", "; ".join(dict.fromkeys(dataset(r) for r in rows))
                 + f"; augment {values(key('data.augment'))}, flip {values(key('data.flip'))}"),
        ("training / validation images", values(images)),
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
    pairs = {label: paired(g) for label, g in experiments(groups).items()}
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


TABLE_FILE = "table.tex"  # the main tables as LaTeX (booktabs)


def _experiments(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return experiments(summary["groups"])


def _cell(found: Cell | None, show_n: bool = True) -> str:
    if found is None:
        return ""
    g, one_worker = found
    if g["val_err_mean"] is None:
        return "not completed: " + ", ".join(sorted(set(g["not_completed"].values())))  # e.g. still running
    text = f"{100 * g['val_err_mean']:.1f}"
    if g["val_err_half"] is not None:
        text += f" ± {100 * g['val_err_half']:.1f}" + (f" (n={g['completed']})" if show_n else "")
    if one_worker:
        text += " †"
    if g["not_completed"]:
        text += f" ({len(g['not_completed'])} not completed)"
    flags = sorted({f for names in g["flagged"].values() for f in names})
    if flags:
        text += f" ({len(g['flagged'])}/{g['runs']} {', '.join(flags)})"
    return text


def seeds_per_cell(groups: list[dict[str, Any]]) -> list[int]:
    """The numbers of completed seeds the experiment's cells hold (one value: every cell has as many)."""
    return sorted({g["completed"] for g in groups if g["completed"]})


def _line_label(norm: str, series: str) -> str:
    return f"{norm} ({series})" if series else norm


def table_rows(groups: list[dict[str, Any]]) -> tuple[list[int], list[tuple[str, list[str]]]]:
    """Norms (of each series) × images per worker of one experiment as text cells: final val error % (mean ± 95%
    interval); each cell's n only where the cells' n differ (else `seeds_per_cell` says it once)."""
    xs, lines = cells(groups)
    show_n = len(seeds_per_cell(groups)) > 1
    return xs, [(_line_label(norm, series), [_cell(c, show_n) for c in line]) for norm, series, line in lines]


def _split(groups: list[dict[str, Any]], x: int) -> str:
    """`B=32, W=16`: the total batch and workers of the runs at x (BN's, where the others stand at every x)."""
    at = [g for g in groups if g["images_per_worker"] == x]
    split = sorted({(g["batch_size"], g["workers"]) for g in at})
    return "; ".join(f"B={b}, W={w}" for b, w in split)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _seeds_words(groups: list[dict[str, Any]]) -> str:
    ns = seeds_per_cell(groups)
    if not ns:
        return "no completed run"
    return f"n = {ns[0]} {'seed' if ns == [1] else 'seeds'} per cell" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"


def _series_words(groups: list[dict[str, Any]]) -> str:
    """`Series (one per sweep): a: optim.lr=0.02; b: optim.lr=0.05.` where the experiment holds several."""
    named = {g["series"]: g["series_settings"] for g in groups if g["series"]}
    if not named:
        return ""
    listed = "; ".join(
        f"`{s}`: {text or 'the same settings, the same seeds again'}" for s, text in sorted(named.items())
    )
    return f"Series (one per sweep directory, as their settings differ): {listed}."


NOTES = (
    "Cells: final validation error %, mean ± half-width of the 95% interval over n seeds (Student t); a single seed "
    "shows its value alone. x: images per worker (the batch one BN layer normalizes over); B = total batch, "
    "W = workers."
)
ONE_WORKER = (
    "†: a norm whose statistics do not depend on the split (per sample) trained once per seed at one worker; the "
    "same runs stand at every x with that total batch."
)


# --- The reading: what the paired differences say, in one line --------------------------------------------


def _shown(norm: str) -> str:
    return {"syncbn": "SyncBN"}.get(norm, norm.upper())


def _where(xs: list[int], every: list[int]) -> str:
    """`at 2 images per worker`, `from 4 images per worker up`, `at 4 to 16 images per worker`, `at 2, 8 ...`."""
    if len(xs) == 1:
        return f"at {xs[0]} images per worker"
    if xs == every:
        return f"at every images-per-worker value ({xs[0]} to {xs[-1]})"
    start = every.index(xs[0])
    if every[start : start + len(xs)] == xs:
        if xs[-1] == every[-1]:
            return f"from {xs[0]} images per worker up"
        return f"at {xs[0]} to {xs[-1]} images per worker"
    return f"at {', '.join(map(str, xs))} images per worker"


def _by(pairs: list[dict[str, Any]]) -> str:
    ns = sorted({p["n"] for p in pairs})
    n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    flagged = ", flagged runs among them" if any(p["flagged"] for p in pairs) else ""
    if len(pairs) == 1:
        p = pairs[0]
        return f"by {100 * abs(p['diff_mean']):.1f} ± {100 * p['diff_half']:.1f} points, {n}{flagged}"
    sizes = sorted(100 * abs(p["diff_mean"]) for p in pairs)
    return f"by {sizes[0]:.1f} to {sizes[-1]:.1f} points, {n}{flagged}"


def reading(pairs: list[dict[str, Any]]) -> str:
    """What one series' paired differences against BN say, one sentence per norm: where the norm is better than
    BN, worse, or not distinguishable from it (the 95% interval of the paired difference excludes 0 or not), with
    the size of the difference; runs of consecutive images-per-worker values with the same verdict read as one."""
    if not pairs:
        return f"no paired difference: no {BASELINE.upper()} cell shares seeds with another norm's."
    every = sorted({p["images_per_worker"] for p in pairs})
    sentences = []
    for norm in sorted({p["norm"] for p in pairs}, key=_norm_rank):
        mine = sorted((p for p in pairs if p["norm"] == norm), key=lambda p: p["images_per_worker"])
        runs: list[tuple[str, list[dict[str, Any]]]] = []
        for p in mine:
            if p["diff_half"] is None:
                kind = "one seed"
            elif not p["verdict"].startswith(("not", "one")):
                kind = "better" if p["diff_mean"] < 0 else "worse"
            else:
                kind = "level"
            if runs and runs[-1][0] == kind:
                runs[-1][1].append(p)
            else:
                runs.append((kind, [p]))
        parts = []
        for kind, members in runs:
            where = _where([p["images_per_worker"] for p in members], every)
            if kind in ("better", "worse"):
                parts.append(f"{kind} than {_shown(BASELINE)} {where} ({_by(members)})")
            elif kind == "level":
                parts.append(f"not distinguishable from {_shown(BASELINE)} {where}")
            else:
                parts.append(f"{where} one seed only (no interval)")
        first, *rest = parts
        verb = "is " if not first.startswith("at ") else ""
        sentences.append(f"{_shown(norm)} {verb}{first}" + "".join(f"; {r}" for r in rest) + ".")
    return " ".join(sentences)


def readings(summary: dict[str, Any]) -> list[str]:
    """One reading per experiment and series, labelled where there are several."""
    out = []
    several = len(_experiments(summary)) > 1
    for label, groups in _experiments(summary).items():
        pairs = summary["paired"].get(label, [])
        for series in series_of(groups):
            mine = [p for p in pairs if p["series"] == series]
            where = ", ".join(t for t in (label if several else "", series) if t)
            flagged = " Flagged runs are among these pairs (see the flagged runs)." if any(
                p["flagged"] for p in mine) else ""  # fmt: skip
            out.append(f"{where + ': ' if where else ''}{reading(mine)}{flagged}")
    return out


def print_tables(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for label, groups in _experiments(summary).items():
        xs, rows = table_rows(groups)
        console.print(
            f"[bold]{label}[/]: final validation error % by images per worker (mean ± 95% interval over seeds, "
            f"{_seeds_words(groups)})",
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
        if _series_words(groups):
            console.print(escape(_series_words(groups)), highlight=False)
        for p in summary["paired"].get(label, []):
            if p["diff_half"] is not None:
                console.print(
                    f"  {p['series'] + ': ' if p['series'] else ''}{p['images_per_worker']}/worker: {p['norm']} − "
                    f"{BASELINE} = {100 * p['diff_mean']:+.1f} ± {100 * p['diff_half']:.1f} points (n={p['n']}): "
                    f"{p['verdict']}",
                    highlight=False,
                )
    for line in readings(summary):
        console.print(f"[bold]Reading[/]: {escape(line)}", highlight=False, soft_wrap=True)
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


def _numbers(values: list[Any]) -> str:
    """`32`, `2, 4, 8`, or `0.0025–0.04` for more than three numbers."""
    found = sorted(set(values))
    if len(found) > 3 and all(isinstance(v, int | float) for v in found):
        return f"{found[0]:g}–{found[-1]:g}"
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in found)


def make_figures(
    summary: dict[str, Any], out_dir: Path, reference: Reference | None = None, smooth: int = SMOOTH
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    found = _experiments(summary)
    norms = sorted({g["norm"] for g in summary["groups"]}, key=_norm_rank)
    colors = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(norms)}
    for i, (label, groups) in enumerate(found.items()):
        fig, axes = plt.subplots(1, 2 if reference else 1, figsize=(13 if reference else 7.5, 5), squeeze=False)
        ax = axes[0][0]
        _draw_errors(ax, groups, colors)
        lrs = [lr for g in groups for lr in g["lr"]]
        totals, workers = _numbers([g["batch_size"] for g in groups]), _numbers([g["workers"] for g in groups])
        ax.set_title(f"Validation error vs images per worker — {label}\ntotal batch {totals}; workers {workers}; "
                     f"{_seeds_words(groups)}; lr {_numbers(lrs) if lrs else 'not recorded'}", fontsize=10)  # fmt: skip
        if reference:
            _draw_reference(axes[0][1], reference, colors, plt)
        fig.tight_layout()
        path = out_dir / f"error_vs_batch{_suffix(i, len(found))}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
        curves = out_dir / f"curves{_suffix(i, len(found))}.png"
        paths.append(_curves_figure(plt, summary, groups, colors, label, curves, smooth))
    return paths


MARKERS = ("o", "s", "^", "D", "v", "P")  # one per series


def _draw_errors(ax: Any, groups: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    """Mean error per norm (of each series: a marker each, set slightly apart) and x with its 95% interval (no bar
    for one seed); hollow where a run is flagged; a split-free norm drawn from one worker dashed; chance as a grey
    line where it lies within or near the data's range, else named in the legend only (it would squash the data)."""
    from matplotlib.lines import Line2D

    xs, lines = cells(groups)
    series = list(series_of(groups))
    handles, low, high = [], math.inf, -math.inf
    for norm, name, line in lines:
        pts = [(x, c[0], c[1]) for x, c in zip(xs, line, strict=True) if c and c[0]["val_err_mean"] is not None]
        if not pts:
            continue
        k = series.index(name)
        shift = 2 ** (0.05 * (k - (len(series) - 1) / 2))  # apart on the log axis, so that their bars do not overlap
        color, marker = colors[norm], MARKERS[k % len(MARKERS)]
        one_worker = any(w for _, _, w in pts)  # the same runs drawn at every x
        ax.plot([x * shift for x, _, _ in pts], [100 * g["val_err_mean"] for _, g, _ in pts], color=color,
                ls="--" if one_worker else "-", lw=1.5)  # fmt: skip
        for x, g, _ in pts:
            y, half = 100 * g["val_err_mean"], 100 * (g["val_err_half"] or 0.0)
            low, high = min(low, y - half), max(high, y + half)
            if g["val_err_half"] is not None:
                ax.errorbar([x * shift], [y], yerr=[half], color=color, capsize=3, lw=1, ls="none")
            hollow = bool(g["flagged"])
            ax.plot([x * shift], [y], marker=marker, ms=7, color=color, mfc="white" if hollow else color, ls="none")
        tag = " (1 worker, same runs at every x)" if one_worker else ""
        handles.append(Line2D([], [], color=color, marker=marker, ls="--" if tag else "-",
                              label=_line_label(norm, name) + tag))  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("images per worker (the batch one BN layer normalizes over)")
    ax.set_ylabel("final validation error (%), mean and 95% interval")
    ax.grid(alpha=0.3)
    chance = 100 * (1 - groups[0]["chance"])
    if low <= high and near_range(chance, low, high):
        ax.axhline(chance, color="grey", ls=":", lw=1.2)
        handles.append(Line2D([], [], color="grey", ls=":", label=f"chance ({chance:.0f}% error)"))
    else:
        where = "above" if low <= high and chance > high else "below"
        handles.append(Line2D([], [], color="grey", ls="none", marker="^" if where == "above" else "v",
                              label=f"chance: {chance:.0f}% error, {where} the drawn range"))  # fmt: skip
    if any(c and c[0]["flagged"] for _, _, line in lines for c in line):  # the key only where it explains a point
        hollow = Line2D([], [], color="black", marker="o", mfc="white", ls="none", label="flagged run in the cell")
        handles.append(hollow)
    ax.legend(handles=handles, fontsize=8)


def near_range(value: float, low: float, high: float) -> bool:
    """Whether a reference line at `value` can be drawn with data spanning [low, high] without squashing it: within
    the range, or beyond it by at most half the range (at least 2 points)."""
    margin = max((high - low) / 2, 2.0)
    return low - margin <= value <= high + margin


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


def mean_and_range(
    curves: list[list[tuple[float, float]]],
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The mean of several seeds' curves (x, y) and their range (min, max) at each x of the first curve that lies
    where every curve has points (the others interpolated linearly there): (x, mean, low, high)."""
    import numpy as np

    curves = [c for c in curves if c]
    start, end = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    x = [px for px, _ in curves[0] if start <= px <= end]
    ys = np.array([np.interp(x, [p[0] for p in c], [p[1] for p in c]) for c in curves])
    return x, ys.mean(axis=0).tolist(), ys.min(axis=0).tolist(), ys.max(axis=0).tolist()


def _curves_figure(
    plt: Any,
    summary: dict[str, Any],
    groups: list[dict[str, Any]],
    colors: dict[str, Any],
    label: str,
    path: Path,
    smooth: int,
) -> Path:
    """Loss against examples seen, one panel per images-per-worker value (and series): per cell, the mean over its
    seeds of the training loss (solid, smoothed) and of the validation loss (dashed), each with a band over the
    range of its seeds (min to max)."""
    xs, lines = cells(groups)
    series = list(series_of(groups))
    cols = min(len(xs), 5)
    per_series = math.ceil(len(xs) / cols)
    fig, axes = plt.subplots(per_series * len(series), cols, figsize=(4.6 * cols, 3.8 * per_series * len(series)),
                             squeeze=False, sharey=True)  # fmt: skip
    by_cell: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in summary["runs"]:
        by_cell[(r["model"], r["data"], r["variant"], r["series"], r["norm"], r["batch_size"], r["workers"])].append(r)
    for k, name in enumerate(series):
        panels = axes[k * per_series : (k + 1) * per_series].flat
        for i, (ax, x) in enumerate(zip(panels, xs, strict=False)):
            for norm, line_series, line in lines:
                if line_series != name or line[i] is None:
                    continue
                g, one_worker = line[i]
                key = (g["model"], g["data"], g["variant"], g["series"], norm, g["batch_size"], g["workers"])
                members = [r for r in by_cell[key] if r["history"]]
                if not members:
                    continue
                color = colors[norm]
                text = f"{norm}{' (1 worker)' if one_worker else ''}, n={len(members)}"
                train = [list(zip([p[0] for p in r["curve"]], smoothed([p[1] for p in r["curve"]], smooth),
                                  strict=True)) for r in members if r["curve"]]  # fmt: skip
                if train:
                    at, mean, lo, hi = mean_and_range(train)
                    ax.plot(at, mean, color=color, lw=1.2, label=text)
                    if len(train) > 1:
                        ax.fill_between(at, lo, hi, color=color, alpha=0.18, lw=0)
                val = [[(h.examples, h.val_loss) for h in r["history"]] for r in members]
                at, mean, lo, hi = mean_and_range(val)
                ax.plot(at, mean, color=color, ls="--", marker=".", lw=1.2, label=None if train else text)
                if len(val) > 1:
                    ax.fill_between(at, lo, hi, color=color, alpha=0.1, lw=0)
            ax.set_title(f"{x} images per worker ({_split(groups, x)})" + (f" — {name}" if name else ""), fontsize=10)
            ax.set_xlabel("examples seen")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[1]:  # a panel without a curve (no run got to an epoch's end): none
                ax.legend(fontsize=8)
        for ax in list(panels)[len(xs) :]:
            ax.axis("off")
    for row in axes:
        row[0].set_ylabel("loss (train solid, val dashed)")
    fig.suptitle(f"Loss curves — {label}: per cell the mean over its seeds, the band their range (min to max);\n"
                 f"train loss a moving average over {smooth} logged points", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _tex(text: str) -> str:
    """Text for LaTeX: its special characters escaped."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip
    return "".join(special.get(c, c) for c in text)


def latex(summary: dict[str, Any]) -> str:
    """The main table of each experiment as LaTeX (booktabs): final validation error % by images per worker, mean
    ± 95% interval over seeds, for a paper. Needs `\\usepackage{booktabs}`."""
    out = ["% normbench report: final validation error (%), mean ± 95% interval over seeds (Student t).",
           "% Needs \\usepackage{booktabs}.", ""]  # fmt: skip
    for label, groups in _experiments(summary).items():
        xs, lines = cells(groups)
        notes = [f"{_tex(_seeds_words(groups))}", "$B$: total batch, $W$: workers"]
        rows = []
        for norm, series, line in lines:
            texts = []
            for c in line:
                if c is None or c[0]["val_err_mean"] is None:
                    texts.append("--")
                    continue
                g, one_worker = c
                value = f"{100 * g['val_err_mean']:.1f}"
                if g["val_err_half"] is not None:
                    value += f" \\pm {100 * g['val_err_half']:.1f}"
                marks = " ".join(m for m, on in (("\\dagger", one_worker), ("*", g["flagged"])) if on)
                texts.append(f"${value}" + (f"^{{{marks}}}" if marks else "") + "$")
            rows.append(f"{_tex(_line_label(norm, series))} & " + " & ".join(texts) + r" \\")
        if any(c and c[1] for _, _, line in lines for c in line):
            notes.append("$^\\dagger$ trained once per seed at one worker (its statistics do not depend on the "
                         "split): the same runs at every column")  # fmt: skip
        if any(c and c[0]["flagged"] for _, _, line in lines for c in line):
            notes.append("$^{*}$ a run of the cell is flagged (did not learn, or not converged)")
        if _series_words(groups):
            notes.append(_tex(_series_words(groups).replace("`", "")))
        out += [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_tex(label)}: final validation error (\\%) by images per worker, mean $\\pm$ 95\\% "
            f"interval over seeds (Student $t$); {'; '.join(notes)}.}}",
            f"\\begin{{tabular}}{{l{'r' * len(xs)}}}",
            "\\toprule",
            "norm & " + " & ".join(str(x) for x in xs) + r" \\",
            " & " + " & ".join(f"{{\\small {_split(groups, x).replace('; ', ' / ')}}}" for x in xs) + r" \\",
            "\\midrule",
            *rows,
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
            "",
        ]
    return "\n".join(out)


def markdown(summary: dict[str, Any], figures: list[Path], reference: Reference | None = None) -> str:
    runs = summary["runs"]
    lines = [f"# normbench report: `{summary['root']}`", ""]
    said = readings(summary)
    lead = f"**Reading** (paired differences against {_shown(BASELINE)}, 95% intervals over seeds):"
    lines += [f"{lead} {said[0]}"] if len(said) == 1 else [lead, "", *(f"- {text}" for text in said)]
    lines.append("")
    n_done = sum(r["status"] == R.COMPLETED for r in runs)
    counts = flagged_count(summary)
    flagged = ", ".join(f"{_plural(n, 'run')} {flag}" for flag, n in counts.items()) or "none"
    lines += [f"{_plural(len(runs), 'run')}, {n_done} completed. Flagged: {flagged}.", "", NOTES, ""]
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["settings"]]
    lines.append("")
    for label, groups in _experiments(summary).items():
        xs, rows = table_rows(groups)
        lines += [
            f"## {label}",
            "",
            f"Final validation error %, mean ± 95% interval over seeds ({_seeds_words(groups)}); the same table as "
            "LaTeX (booktabs) in [table.tex](table.tex).",
            "",
            "| norm | " + " | ".join(f"{x}/worker" for x in xs) + " |",
            "|---|" + "---:|" * len(xs),
            "| *split* | " + " | ".join(_split(groups, x) for x in xs) + " |",
        ]
        lines += [f"| {norm} | " + " | ".join(texts) + " |" for norm, texts in rows]
        lines.append("")
        if any("†" in c for _, texts in rows for c in texts):
            lines += [ONE_WORKER, ""]
        if _series_words(groups):
            lines += [_series_words(groups), ""]
        pairs = summary["paired"].get(label, [])
        if pairs:
            several = len(series_of(groups)) > 1
            lines += [
                f"Paired differences against {BASELINE} (same seeds): error of the norm − error of {BASELINE}, "
                "points, mean ± 95% interval.",
                "",
                f"| {'series | ' if several else ''}images per worker | norm | difference | n | reading |",
                f"|{'---|' if several else ''}---:|---|---:|---:|---|",
            ]
            for p in pairs:
                diff = f"{100 * p['diff_mean']:+.1f}" + (
                    f" ± {100 * p['diff_half']:.1f}" if p["diff_half"] is not None else ""
                )
                lines.append(f"| {p['series'] + ' | ' if several else ''}{p['images_per_worker']} | {p['norm']} | "
                             f"{diff} | {p['n']} | {p['verdict']} |")  # fmt: skip
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
    for groups in _experiments(summary).values():
        xs, lines = cells(groups)
        for norm, _, line in lines:
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
    """Summary files, figures, table.tex and report.md in `out` (default: `root`); returns (summary, figures, report
    path)."""
    root = root.resolve()
    out = (out or root).resolve()
    summary = write_summary(root, out, summary)
    figures = make_figures(summary, out, reference, smooth)
    (out / TABLE_FILE).write_text(latex(summary))
    path = out / "report.md"
    path.write_text(markdown(summary, figures, reference))
    return summary, figures, path
