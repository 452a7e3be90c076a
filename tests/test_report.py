"""The report's science: runs that did not learn are flagged, cells carry 95% intervals over seeds, and each norm
is compared with BN on the same seeds. Numbers are checked against scipy.stats (or published t tables)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import train

from normbench.run import record as R
from normbench.run.record import Epoch, Metrics, RunRecord, learning_flags
from normbench.run.report import TABLE_FILE, mean_and_range, reading, run_columns, smoothed, summarize, write_report
from normbench.run.stats import interval, t_quantile

# --- Flags ----------------------------------------------------------------------------------------------


def falling(start: float, end: float, n: int = 100, late: bool = False) -> list[list[float]]:
    """A training-loss curve from `start` to `end`: settling early (exponential), or falling evenly (late)."""
    if late:
        return [[32.0 * (i + 1), start + (end - start) * i / (n - 1)] for i in range(n)]
    return [[32.0 * (i + 1), end + (start - end) * math.exp(-8 * i / (n - 1))] for i in range(n)]


def record(val_acc: float, train_loss: float, curve: list[list[float]], status: str = R.COMPLETED, **kw) -> RunRecord:
    epoch = Epoch(1, 100, 3200, train_loss, 0.5, 1.5, val_acc, 0.01, 1.0)
    values = dict(model="cnn", norm="bn", batch_size=32, seed=0, history=[epoch], curve=curve, config={})
    return RunRecord(status, metrics=Metrics.of([epoch], val_acc), **(values | kw))


def test_a_run_that_learned_and_settled_is_not_flagged() -> None:
    assert learning_flags(record(0.55, 1.2, falling(2.4, 1.2))) == {}


def test_a_run_at_chance_did_not_learn() -> None:
    flags = learning_flags(record(0.12, 1.9, falling(2.4, 1.9)))
    assert (
        list(flags) == [R.DID_NOT_LEARN]
        and "12.0%" in flags[R.DID_NOT_LEARN]
        and "chance (10%)" in flags[R.DID_NOT_LEARN]
    )
    assert learning_flags(record(0.16, 1.9, falling(2.4, 1.9))) == {}  # 6 points above chance: learned a little
    assert R.DID_NOT_LEARN in learning_flags(record(0.50, 2.0, falling(2.4, 2.0), num_classes=2))  # chance 50%


def test_a_run_whose_loss_stayed_flat_did_not_learn() -> None:
    flags = learning_flags(record(0.20, 2.25, falling(2.31, 2.25)))  # above chance + 5, loss near ln 10 = 2.30
    assert list(flags) == [R.DID_NOT_LEARN] and "training loss 2.25" in flags[R.DID_NOT_LEARN]


def test_a_run_still_improving_fast_has_not_converged() -> None:
    flags = learning_flags(record(0.45, 1.5, falling(2.4, 1.5, late=True)))
    assert list(flags) == [R.NOT_CONVERGED] and "still improving" in flags[R.NOT_CONVERGED]
    # A loss falling at a constant rate: window centres at 2.5%, 75% and 95% of training, so 0.20 / 0.925 of the
    # fall lies between the last two.
    assert R.late_fall(falling(2.4, 1.5, late=True)) == pytest.approx(0.2 / 0.925, rel=0.02)


def test_runs_that_did_not_complete_are_not_flagged() -> None:
    assert learning_flags(record(0.1, 2.3, [], status=R.DIVERGED)) == {}


def test_an_old_record_gets_its_flags_when_read(tmp_path) -> None:
    data = json.loads(json.dumps(record(0.11, 2.3, falling(2.4, 2.3)), default=lambda o: o.__dict__))
    del data["flags"], data["num_classes"]  # written before these fields existed
    (tmp_path / R.RESULTS_FILE).write_text(json.dumps(data))
    assert list(RunRecord.read(tmp_path).flags) == [R.DID_NOT_LEARN]


def test_a_one_step_run_is_flagged_in_its_record_summary_and_report(tmp_path) -> None:
    from normbench.launch.execute import print_summary

    run_dir = tmp_path / "one"
    done = train(run_dir, "max_steps=1", "log.activations=false")
    written = json.loads((run_dir / R.RESULTS_FILE).read_text())
    assert done.status == R.COMPLETED and done.steps == 1 and written["num_classes"] == 10
    assert R.DID_NOT_LEARN in written["flags"]  # one step of SGD: at chance, loss at ln 10
    print_summary(done)  # the console summary shows it (captured: no exception is the check here; text below)
    _, _, report = write_report(run_dir)
    text = report.read_text()
    assert "1 run, 1 completed. Flagged: 1 run did not learn." in text and "## Flagged runs" in text
    with (run_dir / "summary.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["flags"].startswith("did not learn: ")


# --- Intervals and paired differences -------------------------------------------------------------------

# Published two-sided 95% t values (e.g. NIST/SEMATECH e-Handbook, table of the t distribution's upper critical
# values at 0.025): the oracle where scipy is not installed.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_against_the_published_table(df) -> None:
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=6e-4)


def test_t_quantile_and_interval_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 15, 60, 500):
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10)
    values = [0.41, 0.37, 0.45, 0.40]
    got = interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=stats.tmean(values), scale=stats.sem(values))
    assert (got.low, got.high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
    assert interval([0.3]).half is None


ERRORS = {  # (norm, workers) -> final val error per seed: a BN that gets worse as its share shrinks
    ("bn", 16): [0.62, 0.58, 0.60],
    ("bn", 1): [0.40, 0.43, 0.41],
    ("gn", 1): [0.45, 0.46, 0.47],
    ("ln", 1): [0.90, 0.50, 0.52],  # seed 0 flagged: at chance
}


CURVE_END = (1.0, 1.1, 1.3)  # each seed's training loss settles elsewhere: the curves' band has a width


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A 3-seed sweep with BN at 2 and 32 images per worker (total batch 32) and GN, LN at one worker."""
    root = tmp_path_factory.mktemp("grid")
    for (norm, workers), errors in ERRORS.items():
        for seed, err in enumerate(errors):
            config = {"workers": workers, "data": {"name": "synthetic", "train_size": 100}, "optim": {"lr": 0.02}}
            rec = record(1 - err, 1.0 if err < 0.9 else 2.3, falling(2.4, CURVE_END[seed]), norm=norm, seed=seed,
                         config=config, workers=workers, images_per_worker=32 // workers,
                         effective_lr=0.02)  # fmt: skip
            if norm == "bn":
                rec.metrics.val_acc_batch_stats, rec.metrics.val_acc_precise_bn = 0.123, 0.456
                rec.precise_bn_images = 16
            rec.warnings = ["PreciseBN used 16 images, fewer than asked"] if norm == "bn" else []
            rec.write(root / f"{norm}_w{workers:02d}_seed{seed}")
    return root


def test_cells_carry_the_mean_and_t_interval_and_per_sample_norms_stand_at_every_x(grid) -> None:
    stats = pytest.importorskip("scipy.stats")
    summary = summarize(grid)
    cells = {(g["norm"], g["images_per_worker"]): g for g in summary["groups"]}
    assert set(cells) == {("bn", 2), ("bn", 32), ("gn", 32), ("ln", 32)}
    for (norm, workers), errors in ERRORS.items():
        g = cells[(norm, 32 // workers)]
        low, high = stats.t.interval(0.95, 2, loc=sum(errors) / 3, scale=stats.sem(errors))
        assert g["val_err_mean"] == pytest.approx(sum(errors) / 3)
        assert g["val_err_mean"] - g["val_err_half"] == pytest.approx(low) and g["completed"] == 3
        assert g["val_err_mean"] + g["val_err_half"] == pytest.approx(high)
    assert list(cells[("ln", 32)]["flagged"]) == ["ln_w01_seed0"]


def test_paired_differences_against_bn_on_the_same_seeds(grid) -> None:
    stats = pytest.importorskip("scipy.stats")
    pairs = {(p["images_per_worker"], p["norm"]): p for p in summarize(grid)["paired"]["cnn"]}
    assert set(pairs) == {(2, "gn"), (2, "ln"), (32, "gn"), (32, "ln")}  # gn and ln drawn at 2 from one worker
    for x, workers in ((2, 16), (32, 1)):
        for norm in ("gn", "ln"):
            diffs = [a - b for a, b in zip(ERRORS[(norm, 1)], ERRORS[("bn", workers)], strict=True)]
            test = stats.ttest_rel(ERRORS[(norm, 1)], ERRORS[("bn", workers)])
            low, high = test.confidence_interval(0.95)
            p = pairs[(x, norm)]
            assert p["diff_mean"] == pytest.approx(sum(diffs) / 3) and p["n"] == 3 and p["seeds"] == [0, 1, 2]
            assert (p["diff_mean"] - p["diff_half"], p["diff_mean"] + p["diff_half"]) == (
                pytest.approx(low),
                pytest.approx(high),
            )
            reading = "not distinguishable" if low < 0 < high else f"{norm if high < 0 else 'bn'} better"
            assert p["verdict"].startswith(reading)
    assert pairs[(2, "gn")]["verdict"] == "gn better" and pairs[(32, "gn")]["verdict"] == "bn better"
    assert pairs[(2, "ln")]["verdict"] == "not distinguishable (flagged runs in the pair)"  # a flagged seed: wide


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """The figures the report saves, kept to read back what was drawn on them: {file name: Figure}."""
    import matplotlib.figure

    figures = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(self, path, *args, **kwargs):
        figures[Path(path).name] = self
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return figures


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _points(ax, marker: str = "o") -> list[tuple[float, float, bool]]:
    """The single points drawn with `marker`: (x, y, hollow)."""
    return [(*line.get_xydata()[0], line.get_markerfacecolor() == "white") for line in ax.lines
            if line.get_marker() == marker and len(line.get_xdata()) == 1]  # fmt: skip


def test_report_md_and_figure_show_intervals_differences_flags_and_chance(grid, tmp_path, drawn) -> None:
    _, figures, path = write_report(grid, out=tmp_path)
    text = path.read_text()
    ax = drawn["error_vs_batch.png"].axes[0]
    chance = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert chance == [90.0]  # the ln seed at chance puts chance within the data's range: drawn
    assert "chance (90% error)" in _legend(ax)
    ln = ERRORS[("ln", 1)]
    hollow = [(x, y) for x, y, empty in _points(ax) if empty]
    assert {x for x, _ in hollow} == {2, 32} and all(y == pytest.approx(100 * sum(ln) / 3) for _, y in hollow)
    bn = {x: y for x, y, _ in _points(ax) if y == pytest.approx(100 * sum(ERRORS[("bn", 32 // x)]) / 3)}
    assert sorted(bn) == [2, 32]  # bn at 2 (16 workers) and 32 (one worker)
    assert "n = 3 seeds per cell; lr 0.02" in ax.get_title() and "total batch 32; workers 1, 16" in ax.get_title()
    assert "12 runs, 12 completed. Flagged: 1 run did not learn." in text
    assert f"| bn | {100 * sum(ERRORS[('bn', 16)]) / 3:.1f} ± " in text and "(n = 3 seeds per cell)" in text
    assert "(n=3)" not in text.split("## Paired")[0].split("| norm |")[1].split("\n\n")[0]  # said once, above
    assert "†" in text and "| *split* | B=32, W=16 | B=32, W=1 |" in text
    assert "| 2 | gn | " in text and "gn better" in text and "not distinguishable" in text
    assert "## Settings" in text and "| workers | 16, 1 |" in text and "| seeds | 0, 1, 2 |" in text
    assert "## BN's three evaluations" in text and "| `bn_w16_seed0` | 38.0 | 12.3 | 45.6 | 16 |" in text
    assert "## Warnings the records carry" in text and "PreciseBN used 16 images" in text
    assert all(p.stat().st_size > 10_000 for p in figures)


def test_the_reading_at_the_top_says_what_the_paired_differences_say(grid, tmp_path) -> None:
    """At 2 images per worker GN is better than BN, at 32 BN is better than GN; LN is not distinguishable (a
    flagged seed); computed from the paired differences, not written by hand."""
    _, _, path = write_report(grid, out=tmp_path)
    first = path.read_text().splitlines()[2]
    gn2 = interval([a - b for a, b in zip(ERRORS[("gn", 1)], ERRORS[("bn", 16)], strict=True)])
    gn32 = interval([a - b for a, b in zip(ERRORS[("gn", 1)], ERRORS[("bn", 1)], strict=True)])
    assert first.startswith("**Reading** (paired differences against BN, 95% intervals over seeds): ")
    assert (f"GN is better than BN at 2 images per worker (by {-100 * gn2.mean:.1f} ± {100 * gn2.half:.1f} points, "
            f"n=3); worse than BN at 32 images per worker (by {100 * gn32.mean:.1f} ± {100 * gn32.half:.1f} points, "
            "n=3).") in first  # fmt: skip
    assert "LN is not distinguishable from BN at every images-per-worker value (2 to 32)." in first
    assert first.endswith("Flagged runs are among these pairs (see the flagged runs).")

    def pair(x, diff, half, n=3, norm="gn"):
        verdict = "not distinguishable" if half is not None and abs(diff) <= half else "x better"
        return {"images_per_worker": x, "norm": norm, "n": n, "diff_mean": diff, "diff_half": half,
                "verdict": verdict if half is not None else "one seed: no interval", "flagged": False}  # fmt: skip

    pairs = [pair(2, -0.05, 0.02), pair(4, 0.01, 0.02), pair(8, 0.03, 0.01), pair(16, 0.05, 0.01),
             pair(32, 0.04, 0.02), pair(2, 0.01, None, 1, "ln")]  # fmt: skip
    assert reading(pairs) == (
        "LN at 2 images per worker one seed only (no interval). GN is better than BN at 2 images per worker (by 5.0 "
        "± 2.0 points, n=3); not distinguishable from BN at 4 images per worker; worse than BN from 8 images per "
        "worker up (by 3.0 to 5.0 points, n=3)."
    )
    assert reading([]).startswith("no paired difference")


def test_table_tex_is_the_main_table_in_booktabs(grid, tmp_path) -> None:
    write_report(grid, out=tmp_path)
    tex = (tmp_path / TABLE_FILE).read_text()
    body = tex[tex.index("\\midrule") + len("\\midrule") : tex.index("\\bottomrule")].strip().splitlines()
    assert "\\toprule" in tex and tex.count("\\begin{tabular}{lrr}") == 1 and "\\end{table}" in tex
    rows = {line.split(" & ")[0]: line.removesuffix(" \\\\").split(" & ")[1:] for line in body}
    assert list(rows) == ["bn", "ln", "gn"]  # norm order, like every table
    bn2 = interval(ERRORS[("bn", 16)])
    assert rows["bn"][0] == f"${100 * bn2.mean:.1f} \\pm {100 * bn2.half:.1f}$"
    assert rows["ln"][0].endswith("^{\\dagger *}$") and rows["gn"][0].endswith("^{\\dagger}$")  # one superscript
    assert not rows["gn"][1].endswith("}$")  # at 32 its own runs: no dagger
    assert tex.count("{") == tex.count("}") and all(len(r) == 2 for r in rows.values())
    assert "n = 3 seeds per cell" in tex and "95\\% interval" in tex


def test_curves_draw_each_cells_mean_over_seeds_with_the_band_of_their_range(grid, tmp_path, drawn) -> None:
    write_report(grid, out=tmp_path, smooth=1)
    panels = {ax.get_title().split(" images")[0]: ax for ax in drawn["curves.png"].axes if ax.get_title()}
    ax = panels["32"]
    assert _legend(ax) == ["bn, n=3", "ln, n=3", "gn, n=3"]  # one entry per cell, its seeds counted
    assert _legend(panels["2"]) == ["bn, n=3", "ln (1 worker), n=3", "gn (1 worker), n=3"]
    train = next(line for line in ax.lines if line.get_label() == "bn, n=3")
    seeds = [falling(2.4, end) for end in CURVE_END]
    assert list(train.get_xdata()) == [x for x, _ in seeds[0]]
    assert list(train.get_ydata()) == pytest.approx(
        [sum(y) / 3 for y in zip(*([p[1] for p in c] for c in seeds), strict=True)]
    )
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(min(c[-1][1] for c in seeds)) and band.max() == pytest.approx(2.4)
    assert len([line for line in ax.lines if line.get_linestyle() == "-"]) == 3  # a line per cell, not per seed
    assert "the band their range (min to max);\ntrain loss" in drawn["curves.png"]._suptitle.get_text()
    x, mean, low, high = mean_and_range([[(0, 1.0), (10, 2.0)], [(0, 3.0), (5, 3.0), (10, 4.0)]])
    assert (x, mean, low, high) == ([0, 10], [2.0, 3.0], [1.0, 2.0], [3.0, 4.0])
    assert smoothed([1.0, 3.0], 2) == [1.0, 2.0]


def test_chance_far_above_the_data_is_named_not_drawn(tmp_path, drawn) -> None:
    for norm in ("bn", "gn"):
        for seed, err in enumerate((0.30, 0.32)):
            rec = record(1 - err, 1.0, falling(2.4, 1.0), norm=norm, seed=seed, config={}, effective_lr=0.1)
            rec.write(tmp_path / f"{norm}_b032_seed{seed}")
    write_report(tmp_path)
    ax = drawn["error_vs_batch.png"].axes[0]
    assert not [line for line in ax.lines if line.get_linestyle() == ":"]  # 90% would squash 30-32% to a line
    assert "chance: 90% error, above the drawn range" in _legend(ax)
    assert "n = 2 seeds per cell; lr 0.1" in ax.get_title()


def _sweep(root: Path, errors: dict[str, list[float]], lr: float, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """A sweep directory: BN at 2 images per worker, GN at one worker, total batch 32, the given lr."""
    for norm, values in errors.items():
        workers = 16 if norm == "bn" else 1
        for seed, err in zip(seeds, values, strict=True):
            config = {"workers": workers, "data": {"name": "synthetic", "train_size": 100}, "optim": {"lr": lr}}
            rec = record(1 - err, 1.0, falling(2.4, 1.0), norm=norm, seed=seed, config=config, workers=workers,
                         images_per_worker=32 // workers, effective_lr=lr, data="synthetic")  # fmt: skip
            rec.write(root / f"{norm}_b{32 // workers:03d}{'x16' if workers > 1 else ''}_seed{seed:03d}")


def test_two_sweeps_under_one_folder_share_one_table_and_figure_told_apart(tmp_path, drawn) -> None:
    """Two sweeps of the same design at two learning rates: one table and one figure, a series per sweep, named by
    its directory and what differs; paired differences within each sweep."""
    _sweep(tmp_path / "lr02", {"bn": [0.60, 0.62, 0.58], "gn": [0.50, 0.49, 0.52]}, 0.02)
    _sweep(tmp_path / "lr10", {"bn": [0.45, 0.47, 0.46], "gn": [0.44, 0.46, 0.47]}, 0.1)
    summary, figures, path = write_report(tmp_path)
    assert [p.name for p in figures] == ["error_vs_batch.png", "curves.png"]  # one experiment
    assert {(g["norm"], g["series"], g["series_settings"]) for g in summary["groups"]} == {
        ("bn", "lr02", "optim.lr=0.02"), ("gn", "lr02", "optim.lr=0.02"), ("bn", "lr10", "optim.lr=0.1"),
        ("gn", "lr10", "optim.lr=0.1")}  # fmt: skip
    text = path.read_text()
    assert text.count("\n## cnn\n") == 1 and "| bn (lr02) | " in text and "| gn (lr10) | " in text
    assert (
        "Series (one per sweep directory, as their settings differ): `lr02`: optim.lr=0.02; `lr10`: optim.lr=0.1."
        in text
    )
    assert "| series | images per worker | norm |" in text and "| lr10 | 2 | gn | " in text
    lines = text.splitlines()
    assert lines[2] == "**Reading** (paired differences against BN, 95% intervals over seeds):"  # then one per sweep
    assert lines[4].startswith("- lr02: GN is better than BN at 2") and lines[5].startswith("- lr10: GN is not")
    ax = drawn["error_vs_batch.png"].axes[0]
    assert [t for t in _legend(ax) if t.startswith(("bn", "gn"))] == [
        "bn (lr02)", "gn (lr02) (1 worker, same runs at every x)", "bn (lr10)",
        "gn (lr10) (1 worker, same runs at every x)"]  # fmt: skip
    xs = sorted({x for x, _, _ in _points(ax, "o")} | {x for x, _, _ in _points(ax, "s")})
    assert len(xs) == 4 and xs[0] < 2 < xs[1] and xs[2] < 32 < xs[3]  # each sweep's points set apart
    assert "lr 0.02, 0.1" in ax.get_title()
    titles = [a.get_title() for a in drawn["curves.png"].axes if a.get_title()]
    assert titles == ["2 images per worker (B=32, W=16) — lr02", "32 images per worker (B=32, W=1) — lr02",
                      "2 images per worker (B=32, W=16) — lr10", "32 images per worker (B=32, W=1) — lr10"]  # fmt: skip


def test_two_sweeps_with_the_same_settings_pool_their_seeds(tmp_path) -> None:
    _sweep(tmp_path / "first", {"bn": [0.60, 0.62], "gn": [0.50, 0.49]}, 0.02, seeds=(0, 1))
    _sweep(tmp_path / "more", {"bn": [0.58], "gn": [0.52]}, 0.02, seeds=(2,))
    summary = summarize(tmp_path)
    assert {(g["norm"], g["series"], g["completed"]) for g in summary["groups"]} == {("bn", "", 3), ("gn", "", 3)}
    _sweep(tmp_path / "again", {"bn": [0.61], "gn": [0.5]}, 0.02, seeds=(2,))  # seed 2 twice: told apart
    series = {(g["series"], g["series_settings"]) for g in summarize(tmp_path)["groups"]}
    assert series == {("first", ""), ("more", ""), ("again", "")}


def test_summary_csv_has_every_field_of_the_record(grid) -> None:
    write_report(grid)
    with (grid / "summary.csv").open() as f:
        header = next(csv.reader(f))
    assert header == run_columns()
    bulky = {"metrics", "budget", "history", "curve", "config", "hparams"}
    wanted = {f.name for f in fields(RunRecord)} - bulky | {f.name for f in fields(Metrics)} | {"val_err"}
    assert wanted <= set(header) and {f"budget_{f.name}" for f in fields(R.Budget)} <= set(header)


def test_tuned_learning_rates_are_gathered_beside_the_fixed_lr_grid(grid, tmp_path) -> None:
    """One Optuna study per cell (optimization_results.yaml and its trials' records) next to a fixed-lr grid:
    one table row per study with its best lr and that trial's error, and the grid's error for the same cell (mean
    over seeds, and the run at the study's seed, 0); the trials are not grid cells."""
    import shutil

    import yaml

    root = tmp_path / "both"
    shutil.copytree(grid, root / "grid")
    for cell, (norm, workers), trials in (
        ("gn", ("gn", 1), {0.05: 0.40, 0.2: 0.30}),
        ("bn_w16", ("bn", 16), {0.01: 0.5}),
    ):
        study = root / "tune" / cell
        for i, (lr, err) in enumerate(trials.items()):
            config = {"workers": workers, "optim": {"lr": lr}}
            rec = record(1 - err, 1.0, falling(2.4, 1.0), norm=norm, config=config, workers=workers,
                         images_per_worker=32 // workers)  # fmt: skip
            rec.write(study / str(i))
        best = min(trials, key=trials.get)
        (study / "optimization_results.yaml").write_text(
            yaml.safe_dump({"name": "optuna", "best_params": {"optim.lr": best}, "best_value": 1 - trials[best]})
        )
    summary, _, path = write_report(root)
    text = path.read_text()
    assert len(summary["runs"]) == 12  # the grid's runs only
    gn_grid, gn_seed0 = 100 * sum(ERRORS[("gn", 1)]) / 3, 100 * ERRORS[("gn", 1)][0]
    assert f"| gn | 32 | B=32, W=1 | 0.2 | 30.0 | 2 | {gn_grid:.1f} | {gn_seed0:.1f} |" in text
    bn_grid, bn_seed0 = 100 * sum(ERRORS[("bn", 16)]) / 3, 100 * ERRORS[("bn", 16)][0]
    assert f"| bn | 2 | B=32, W=16 | 0.01 | 50.0 | 1 | {bn_grid:.1f} | {bn_seed0:.1f} |" in text


def test_curves_are_smoothed_by_a_trailing_moving_average() -> None:
    from normbench.run.report import smoothed

    assert smoothed([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert smoothed([4.0, 2.0, 6.0], 1) == [4.0, 2.0, 6.0]  # 1: the raw curve


def test_a_sweep_whose_runs_all_diverged_before_an_epoch_ended_draws_without_a_warning(tmp_path) -> None:
    """No curve to draw in any panel: the panels get no legend, and matplotlib no "No artists with labels" warning
    (the CLI printed it)."""
    import warnings

    for norm in ("bn", "gn"):
        rec = record(0.1, math.nan, [], status=R.DIVERGED, norm=norm, config={}, history=[], effective_lr=1e28)
        rec.write(tmp_path / f"{norm}_b032")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(tmp_path)
    assert (tmp_path / "curves.png").exists()
