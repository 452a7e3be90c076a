"""normbench's benchmarks (`make bench`): ratios, not absolute goals, so they mean something on any machine.

1. data:     batches/s of normbench's on-device data path vs torchvision's DataLoader with per-sample PIL
             transforms (same images, same augmentation, batch 128), and the data path's share of a
             training step of the default cnn.
2. logging:  training time of the default cnn at batch 128 and 8 with activation logging on (default cadence)
             vs off (`log.activations=false`).
3. overhead: normbench's own training path (`train.run`, default logging) vs a bare hand-written PyTorch loop
             (same model, norm, data stream, optimizer, batch size, threads, seed; no logging, no hooks),
             in one process after warm-up, in --reps blocks of rounds ordered normbench, bare, bare,
             normbench (the median of the blocks' ratios); last line
             `overhead ratio: X.XX` (median over cases).
4. switches: train.channels_last (and train.compile with --compile) against the default, per case.
5. e2e:      process wall time of `normbench run` over its own training loop time (`wall_s` of results.json),
             for the default run and a small-batch run (batch 8, 2 epochs of 4,096 images).
6. sweep:    a sweep's wall time over the sum of its runs' training loops divided by the parallel jobs
             (`--sweep`, default the quick sweep with hydra/launcher=parallel: long, so not in the default set).
7. fixed:    the fixed cost of a `normbench run` (its process wall time minus its training, validation and BN-mode
             validation time in results.json) for the two e2e runs, against the floor any hand-written script pays,
             `python -c "import torch"`, in --reps blocks run, floor, floor, run (the median of the blocks' mean
             differences; goal: at most 1.0 s above the floor); the same against the floor of a script that trains
             with a torch.optim optimizer (`import torch` and one SGD built: torch imports torch._dynamo there); and
             how long the default sweep's main process takes to start its first job (its run directory claimed;
             goal: within 3 s).

8. workers:  a training step of the default cnn with workers=8 emulated workers of 2 images against a plain
             16-image bn step (goal <= 1.10x), and the grouped batch-statistics validation (shares of 2 images)
             against the loop of one forward per share it replaces (same accuracy, printed).
9. cli:      `normbench --help`, `--version`, `list`, `explain bn`, `run --help` and a shell completion, each as a
             whole process (median of --reps × 2), against `python -c "pass"` (goal: at most 0.3 s each).

    python scripts/bench.py [--sections data,logging,overhead,switches,e2e,fixed,workers,cli,sweep] [--steps 100]
                            [--reps 2] [--norms bn,gn] [--batches 2,8]   (overhead and switch cases)
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from normbench.base.overrides import hydra_value
from normbench.launch.start import plan_once
from normbench.parts.data import ImageData
from normbench.parts.data.batches import Batches
from normbench.parts.data.synthetic_images import make_synthetic
from normbench.parts.models import build_model as build
from normbench.plan import schema
from normbench.plan.plan import RunPlan
from normbench.run.devices import select_device
from normbench.run.evaluation import batch_stats_accuracy, evaluate, frozen_buffers
from normbench.run.record import find_records
from normbench.run.setup import build_model, build_optimizer
from normbench.run.train import run

CASES = [
    *(("cnn", norm, batch) for batch in (2, 8) for norm in ("bn", "gn")),
    *(("cnn", norm, batch) for batch in (32, 128) for norm in ("bn", "gn", "ln", "in")),
    ("mlp", "bn", 128),
    ("mlp", "bn", 8),  # the shortest step: per-step bookkeeping weighs most here
    ("transformer", "ln", 128),
]


THREADS = torch.get_num_threads()  # main() sets it after --threads
DEFAULT_RUN_IMAGES = 6 * 10_000  # a default run: 6 epochs of the synthetic data's 10,000 training images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def planned(overrides: list[str], directory: str = "/nonexistent") -> RunPlan:
    """The plan `normbench run` makes of `overrides` (in `directory`)."""
    return plan_once([*overrides, f"hydra.run.dir={hydra_value(directory)}"])[0]


def config(model: str, norm: str, batch: int, steps: int, *extra: str) -> list[str]:
    # The thread count always explicit: a run sets torch's for the whole process, and a `threads=1` case must
    # not leave the cases after it on one thread.
    threads = [] if any(e.startswith("threads=") for e in extra) else [f"threads={THREADS}"]
    # Histogram steps as dense as in a default run (log.hist_points over its 60,000 images), not 16 in a round.
    points = f"log.hist_points={max(1, round(schema.LogConfig.hist_points * batch * steps / DEFAULT_RUN_IMAGES))}"
    return [
        f"model={model}", f"norm={norm}", f"batch_size={batch}", f"max_steps={steps}", "epochs=1000", "quiet=true",
        "eval.bn_modes=false", "data.val_size=500", points, *threads, *extra,
    ]  # fmt: skip


def normbench_step(overrides: list[str], data: ImageData) -> float:
    """Seconds per step of normbench's own training loop (`train.run`; its wall_s excludes validation)."""
    with tempfile.TemporaryDirectory() as tmp:
        plan = planned(overrides, tmp)
        record = run(plan, build_model(plan), console=Console(quiet=True), data=data)
    return record.wall_s / record.steps


def bare_step(overrides: list[str], data: ImageData, steps: int) -> float:
    """Seconds per step of a hand-written loop fed by the same data stream as normbench's loop.

    Both loops take their batches from the same live `Batches` iterator, so the ratio isolates the
    harness (logging, hooks, flushes, bookkeeping); the data path is measured on its own in section 1.
    Batches materialised before the clock would be read from cold memory (~150 MB for 100 steps at 128)
    and made the bare loop 20-40% slower in some rounds than normbench's freshly written, cache-hot ones.
    """
    plan = planned(overrides)
    cfg = plan.config
    device = select_device(cfg.device)
    model = build_model(plan).to(device)  # seeded from the plan
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, plan)  # the run's own optimizer
    source = Batches(data.train_images, data.train_labels, cfg.batch_size, data.mean, data.std, device, train=True,
                     augment=True, seed=cfg.seed, channels_last=cfg.train.channels_last)  # fmt: skip
    batches = itertools.islice(itertools.chain.from_iterable(source.epoch(e) for e in itertools.count()), steps)
    model.train()
    sync(device)
    start = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def in_blocks(reps: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Time `a` and `b` in `reps` blocks a, b, b, a after one warm-up round each: each block's four times, as
    ([a1, a2, ...], [b1, b2, ...]), a block's pair at the same index."""
    a(), b()
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(reps):
        a1, b1, b2, a2 = a(), b(), b(), a()
        times_a += [a1, a2]
        times_b += [b1, b2]
    return times_a, times_b


def paired(reps: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float, float]:
    """`in_blocks`: (median of a, median of b, median over blocks of the block's ratio a/b).

    This VM's speed drifts by ±20% over minutes, and a loop right after another one was seen up to 30% slower or
    faster than its neighbours. A block's ratio is the geometric mean of its two pairs (ab and ba), which cancels
    a steady drift within the block and the position in a pair; the median over blocks drops a disturbed one.
    """
    ta, tb = in_blocks(reps, a, b)
    ratios = [math.sqrt(ta[i] / tb[i] * ta[i + 1] / tb[i + 1]) for i in range(0, len(ta), 2)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def bench_data(data: ImageData, reps: int) -> None:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    batch = 128
    n_batches = len(data.train_labels) // batch

    class PILDataset(Dataset):
        """The standard torchvision CIFAR pipeline: a PIL image per sample, transformed one at a time."""

        def __init__(self) -> None:
            self.images = data.train_images.permute(0, 2, 3, 1).numpy()
            self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                        T.Normalize(data.mean, data.std)])  # fmt: skip

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int):
            return self.transform(Image.fromarray(self.images[i])), int(data.train_labels[i])

    loader = DataLoader(PILDataset(), batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
    ours = Batches(data.train_images, data.train_labels, batch, data.mean, data.std, torch.device("cpu"), train=True,
                   augment=True)  # fmt: skip

    def time_ours() -> float:
        start = time.perf_counter()
        for _ in ours.epoch(0):
            pass
        return (time.perf_counter() - start) / n_batches

    def time_loader() -> float:
        start = time.perf_counter()
        for i, _ in enumerate(loader):
            if i == 19:
                break
        return (time.perf_counter() - start) / 20

    t_ours, t_loader, ratio = paired(reps, time_ours, time_loader)
    step = bare_step(config("cnn", "bn", batch, 30), data, 30) - t_ours  # the step without its data
    print(f"data path      {1 / t_ours:9.1f} batches/s ({batch / t_ours:,.0f} images/s)")
    print(f"DataLoader+PIL {1 / t_loader:9.1f} batches/s ({batch / t_loader:,.0f} images/s)")
    print(f"data path speed-up over DataLoader: {1 / ratio:.1f}x")
    print(f"data path share of a default cnn training step at batch {batch}: {100 * t_ours / step:.1f}% "
          f"({1000 * t_ours:.2f} ms of {1000 * step:.1f} ms)")  # fmt: skip


def round_steps(batch: int, steps: int) -> int:
    """Steps per timed round: at least `steps`, and at least 3,200 images, so that a small-batch round lasts
    seconds (noise); its histogram steps are as dense as in a default run (`config`)."""
    return max(steps, 3200 // batch)


def bench_logging(data: ImageData, steps: int, reps: int) -> None:
    for batch in (128, 8):
        on = config("cnn", "bn", batch, round_steps(batch, steps))
        off = config("cnn", "bn", batch, round_steps(batch, steps), "log.activations=false")
        t_on, t_off, ratio = paired(reps, lambda: normbench_step(on, data), lambda: normbench_step(off, data))  # noqa: B023
        points = planned(on).config.log.hist_points
        print(f"b={batch:<4d} logging on {1000 * t_on:7.2f} ms/step, off {1000 * t_off:7.2f} ms/step "
              f"({points} histogram steps per run): ratio {ratio:.3f}")  # fmt: skip


def bench_overhead(data: ImageData, steps: int, reps: int, cases: list[tuple[str, str, int]]) -> float:
    ratios = []
    for model, norm, batch in cases:
        n = round_steps(batch, steps)
        cfg = config(model, norm, batch, n)
        t_nb, t_bare, ratio = paired(reps, lambda: normbench_step(cfg, data), lambda: bare_step(cfg, data, n))  # noqa: B023
        ratios.append(ratio)
        print(f"{model:12s} {norm:3s} b={batch:<4d} normbench {1000 * t_nb:7.1f} ms  bare {1000 * t_bare:7.1f} ms  "
              f"ratio {ratio:.3f}  ({batch / t_nb:,.0f} images/s)")  # fmt: skip
    return statistics.median(ratios)


SWITCH_CASES = [("cnn", "bn", 128), ("cnn", "gn", 128), ("cnn", "in", 128), ("cnn", "bn", 8), ("cnn", "gn", 8)]


def bench_switches(data: ImageData, steps: int, reps: int, compile_: bool, cases: list[tuple[str, str, int]]) -> None:
    """Each switch against the default, in blocks; small batches too, where per-step costs weigh most."""
    switches = {"channels_last": ["train.channels_last=true"], "threads=1": ["threads=1"]}
    if compile_:  # reduce_overhead is CUDA graphs on a GPU; on a CPU inductor compiles as in the default mode
        for mode in ("default", "reduce_overhead"):
            switches[f"compile {mode}"] = ["train.compile=true", f"train.compile_mode={mode}"]
    for model, norm, batch in cases:
        n = round_steps(batch, steps)
        base = config(model, norm, batch, n)
        for name, overrides in switches.items():
            cfg = config(model, norm, batch, n, *overrides)  # the warm-up round compiles
            ratio = paired(reps, lambda: normbench_step(base, data), lambda: normbench_step(cfg, data))[2]  # noqa: B023
            print(f"{model} {norm} b={batch:<4d} {name:24s} {ratio:.2f}x the default speed")


def bench_workers(data: ImageData, steps: int, reps: int) -> None:
    """Emulated workers: one forward with per-share statistics (ghost-BN channels for the fused kernel) against
    plain BN on the same 16 images; then the grouped batch-statistics validation against the loop over shares."""
    n = round_steps(16, steps)
    for impl in ("torch", "reference"):
        plain = config("cnn", "bn", 16, n, f"norm.impl={impl}")
        shared = config("cnn", "bn", 16, n, f"norm.impl={impl}", "workers=8")
        t_w, t_plain, ratio = paired(reps, lambda: normbench_step(shared, data), lambda: normbench_step(plain, data))  # noqa: B023
        print(f"cnn bn impl={impl:9s} b=16: workers=8 (2 images each) {1000 * t_w:6.2f} ms/step, workers=1 "
              f"{1000 * t_plain:6.2f} ms/step: ratio {ratio:.3f} (goal <= 1.10)")  # fmt: skip
    device = select_device("auto")
    torch.manual_seed(0)
    model = build({"name": "cnn"}, {"name": "bn"}, 3, (32, 32), 10).to(device).train()
    shares = Batches(data.val_images, data.val_labels, 2, data.mean, data.std, device, train=False)
    accuracy: dict[str, float] = {}

    def timed(name: str, evaluation: Callable[[], float]) -> float:
        sync(device)
        start = time.perf_counter()
        with frozen_buffers(model):
            accuracy[name] = evaluation()
        sync(device)
        return time.perf_counter() - start

    def loop() -> float:
        return evaluate(model, shares)[1]

    t_loop, t_grouped, ratio = paired(
        reps, lambda: timed("loop", loop), lambda: timed("grouped", lambda: batch_stats_accuracy(model, shares, 256))
    )
    print(f"batch-statistics validation, {len(shares.labels)} images in shares of 2: loop {1000 * t_loop:7.1f} ms, "
          f"grouped (256 at once) {1000 * t_grouped:7.1f} ms: {ratio:.1f}x faster; accuracy {accuracy['loop']:.4f} "
          f"vs {accuracy['grouped']:.4f}")  # fmt: skip


E2E = {"default run": [], "small batches": ["batch_size=8", "epochs=2", "data.subset=4096"]}
NORMBENCH = str(Path(sys.executable).with_name("normbench"))


def bench_e2e() -> None:
    """Each run as a user's second one: its synthetic images already in the cache (making the default set takes
    5-8 s more, once per machine)."""
    for name, overrides in E2E.items():
        planned(overrides).config.data.load()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([NORMBENCH, "run", *overrides, "quiet=true", f"hydra.run.dir={tmp}"], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            wall = time.perf_counter() - start
            (_, record), *_ = find_records(Path(tmp))
        rest = wall - record.wall_s - record.eval_s - record.bn_modes_s
        print(f"{name} ({' '.join(overrides) or 'no overrides'}): process {wall:.1f} s = training loop "
              f"{record.wall_s:.1f} + validation {record.eval_s:.1f} + BN-mode validations {record.bn_modes_s:.1f} "
              f"+ start-up, set-up, records, exit {rest:.1f}: end-to-end ratio {wall / record.wall_s:.2f}")  # fmt: skip


def bench_sweep(overrides: list[str]) -> None:
    planned(["sweep=quick"] if "sweep=quick" in overrides else []).config.data.load()  # as in bench_e2e
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([NORMBENCH, "sweep", *overrides, f"hydra.sweep.dir={tmp}"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - start
        records = [r for _, r in find_records(Path(tmp))]
    # configs/hydra/launcher/parallel.yaml runs 2 jobs at once unless hydra.launcher.n_jobs says otherwise
    n_jobs = next((int(o.split("=")[1]) for o in overrides if o.startswith("hydra.launcher.n_jobs=")), None)
    n_jobs = n_jobs or (2 if "hydra/launcher=parallel" in overrides else 1)
    loops = sum(r.wall_s for r in records)
    evals, bn_modes = sum(r.eval_s for r in records), sum(r.bn_modes_s for r in records)
    print(f"sweep {' '.join(overrides)}: {len(records)} runs, {n_jobs} parallel jobs")
    print(f"wall {wall:.0f} s, training loops {loops:.0f} s in all, {loops / n_jobs:.0f} s per job slot: "
          f"sweep efficiency ratio {wall / (loops / n_jobs):.2f}")  # fmt: skip
    print(f"job slots' time {n_jobs * wall:.0f} s = training {loops:.0f} + validation {evals:.0f} + BN-mode "
          f"validations {bn_modes:.0f} + the rest {n_jobs * wall - loops - evals - bn_modes:.0f} (start-ups, set-ups, "
          f"records, idle slots)")  # fmt: skip


def paired_difference(reps: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float, float]:
    """`in_blocks` for a difference: (median of a, median of b, median over blocks of the block's mean of a - b),
    which cancels a steady drift within a block as `paired`'s ratio does."""
    ta, tb = in_blocks(reps, a, b)
    differences = [(ta[i] - tb[i] + ta[i + 1] - tb[i + 1]) / 2 for i in range(0, len(ta), 2)]
    return statistics.median(ta), statistics.median(tb), statistics.median(differences)


def python_seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def import_torch() -> float:
    """Seconds of `python -c "import torch"`: the floor the issue set for any script that trains with torch."""
    return python_seconds("import torch")


# The floor of any script that trains with a torch.optim optimizer: from torch 2.1 on, Optimizer.add_param_group
# and step are wrapped in torch._disable_dynamo, whose first call imports torch._dynamo (1.3-2 s on a 2-core CPU,
# about as long as `import torch` itself), compiling or not; no public switch avoids it.
OPTIMIZER_FLOOR = "import torch; torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)"


def import_torch_and_optimizer() -> float:
    """Seconds of `python -c "import torch; torch.optim.SGD(...)"` (`OPTIMIZER_FLOOR`)."""
    return python_seconds(OPTIMIZER_FLOOR)


def fixed_cost(overrides: list[str]) -> float:
    """A `normbench run`'s process wall time minus the training, validation and BN-mode validation in its record."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([NORMBENCH, "run", *overrides, "quiet=true", f"hydra.run.dir={tmp}"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - start
        (_, record), *_ = find_records(Path(tmp))
    return wall - record.wall_s - record.eval_s - record.bn_modes_s


def first_job_start() -> float:
    """Seconds from the start of `normbench sweep` (the default grid) until its first run directory is claimed
    (its lock file made, before the run is built); the sweep is then stopped as Ctrl-C stops it."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sweep = subprocess.Popen([NORMBENCH, "sweep", f"hydra.sweep.dir={tmp}"], stdout=subprocess.DEVNULL)
        while not any(Path(tmp).glob("*/.normbench.lock")) and sweep.poll() is None:
            time.sleep(0.01)
        started = time.perf_counter() - start
        sweep.send_signal(signal.SIGINT)
        sweep.wait()
    return started


def bench_fixed(reps: int) -> None:
    for name, overrides in E2E.items():
        planned(overrides).config.data.load()  # as in bench_e2e: the images made once per machine
        cost = functools.partial(fixed_cost, overrides)
        rest, floor, above = paired_difference(reps, cost, import_torch)
        print(f"{name} ({' '.join(overrides) or 'no overrides'}): fixed cost {rest:.2f} s, import torch {floor:.2f} "
              f"s: {above:+.2f} s above the floor (goal: at most +1.00)")  # fmt: skip
        rest, floor, above = paired_difference(reps, cost, import_torch_and_optimizer)
        print(f"{name}: fixed cost {rest:.2f} s, import torch and build a torch.optim optimizer {floor:.2f} s: "
              f"{above:+.2f} s above that floor")  # fmt: skip
    planned(["batch_size=32", "data.train_size=10000"]).config.data.load()  # the default preset's images
    started, floor, above = paired_difference(reps, first_job_start, import_torch)
    print(f"default sweep: first job started after {started:.2f} s (goal: within 3 s); import torch {floor:.2f} s, "
          f"{above:+.2f} s above it")  # fmt: skip


CLI = {
    "--help": ["--help"],
    "--version": ["--version"],
    "list": ["list"],
    "explain bn": ["explain", "bn"],
    "run --help": ["run", "--help"],
}
COMPLETION = {"_NORMBENCH_COMPLETE": "complete_bash", "COMP_WORDS": "normbench run norm=", "COMP_CWORD": "2"}


def command_seconds(args: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=False, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def bench_cli(reps: int) -> None:
    """The commands that answer at once: each a whole process, against the interpreter's own start."""
    cases = {name: functools.partial(command_seconds, [NORMBENCH, *args]) for name, args in CLI.items()}
    cases["completion of norm="] = functools.partial(command_seconds, [NORMBENCH], COMPLETION)
    start = functools.partial(command_seconds, [sys.executable, "-c", "pass"])
    for name, measure in cases.items():
        seconds, python, above = paired_difference(reps, measure, start)
        print(f"normbench {name:24s} {seconds:.2f} s (python alone {python:.2f} s, {above:+.2f} s above it; goal: "
              "at most 0.30 s)")  # fmt: skip


def selected(cases: list[tuple[str, str, int]], norms: str | None, batches: str | None) -> list[tuple[str, str, int]]:
    """The cases of the given norms and batch sizes (comma lists; None: all)."""
    return [
        (model, norm, batch) for model, norm, batch in cases
        if (norms is None or norm in norms.split(",")) and (batches is None or str(batch) in batches.split(","))
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="cli,data,logging,overhead,switches,e2e,fixed,workers")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed round (at least 3,200 images)")
    parser.add_argument("--reps", type=int, default=2, help="blocks of 4 timed rounds per case")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--norms", default=None, help="only these norms' overhead and switch cases (e.g. bn,in)")
    parser.add_argument("--batches", default=None, help="only these batch sizes' overhead and switch cases (2,8)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (tens of seconds)")
    parser.add_argument("--sweep", default="sweep=quick hydra/launcher=parallel", help="the sweep section's sweep")
    args = parser.parse_args()
    # Commands are timed as a user's Python runs them: with compiled modules cached (each case's warm-up round writes
    # them). An environment that sets PYTHONDONTWRITEBYTECODE would have normbench's sources compiled at every start,
    # while torch's come compiled from its wheel: the floor would not pay what normbench is charged.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.threads:
        torch.set_num_threads(args.threads)
    global THREADS
    THREADS = torch.get_num_threads()
    device = select_device("auto")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"normbench bench: torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {load}")  # fmt: skip
    sections = args.sections.split(",")
    if "cli" in sections:
        print("\n== commands that answer at once")
        bench_cli(args.reps)
    data = make_synthetic(10_000, 500)
    if "data" in sections:
        print("\n== data path (issue: CIFAR-10 fast path)")
        bench_data(data, args.reps)
    if "logging" in sections:
        print("\n== logging cost (activation histograms, BN statistics)")
        bench_logging(data, args.steps, args.reps)
    if "switches" in sections:
        print("\n== speed switches")
        bench_switches(data, args.steps, args.reps, args.compile, selected(SWITCH_CASES, args.norms, args.batches))
    if "overhead" in sections:
        print("\n== normbench vs a bare PyTorch loop")
        ratio = bench_overhead(data, args.steps, args.reps, selected(CASES, args.norms, args.batches))
        print(f"overhead ratio: {ratio:.2f}")
    if "e2e" in sections:
        print("\n== end to end: a whole `normbench run` vs its training loop")
        bench_e2e()
    if "workers" in sections:
        print("\n== emulated workers (per-worker BatchNorm) and grouped batch-statistics validation")
        bench_workers(data, args.steps, args.reps)
    if "sweep" in sections:
        print("\n== sweep efficiency")
        bench_sweep(shlex.split(args.sweep))
    if "fixed" in sections:
        print("\n== fixed cost: a run beyond its training and validation, a sweep until its first job")
        bench_fixed(args.reps)


if __name__ == "__main__":
    main()
