"""Worker processes against emulated workers (docs/workers.md, "Real processes"): ratios measured on this machine.

1. step:  training time per step (results.json `wall_s` / `steps`: start-up and validation excluded) of
          `workers=2 launch=processes` (two processes of `threads` // 2 threads each) against `workers=2` emulated in
          one process of `threads` threads, same model, norm, total batch and steps.
2. stop:  the cost of the workers' stop agreement, one all-reduce (max) of a one-element int32 tensor on gloo per
          step, in microseconds, between two processes of this machine, against the 2-process step time.

    python scripts/bench_processes.py [--model cnn] [--norm bn] [--batch 32] [--steps 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def step_ms(args: argparse.Namespace, *extra: str) -> float:
    """Training milliseconds per step of one `normbench run` (in a fresh process)."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(sys.executable).with_name("normbench")
        overrides = [
            f"model={args.model}", f"norm={args.norm}", f"batch_size={args.batch}", f"max_steps={args.steps}",
            "epochs=1000", f"data.train_size={args.batch * args.steps}", "data.val_size=256", "quiet=true",
            "device=cpu", "log.activations=false", "eval.bn_modes=false", *extra, f"hydra.run.dir={tmp}/r",
        ]  # fmt: skip
        done = subprocess.run([str(exe), "run", *overrides], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stdout + done.stderr)
        record = json.loads((Path(tmp) / "r" / "results.json").read_text())
        return 1000 * record["wall_s"] / record["steps"]


def _agree(rank: int, port: int, rounds: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    flag = torch.zeros(1, dtype=torch.int32)
    for _ in range(100):  # warm-up
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(rounds):
        flag = torch.tensor([0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        int(flag.item())
    if rank == 0:
        out["us"] = 1e6 * (time.perf_counter() - started) / rounds
    dist.destroy_process_group()


def agreement_us(rounds: int = 5000) -> float:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_agree, args=(port, rounds, out), nprocs=2)
        return float(out["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--norm", default="bn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    case = f"{args.model}/{args.norm}, batch {args.batch} (2 workers of {args.batch // 2}), {args.steps} steps"
    half = max(1, args.threads // 2)
    processes = step_ms(args, "workers=2", "launch=processes", f"threads={half}")
    for threads in sorted({args.threads, half}):
        emulated = step_ms(args, "workers=2", f"threads={threads}")
        print(f"step   {case}: 2 processes of {half} threads {processes:.2f} ms, emulated with {threads} threads "
              f"{emulated:.2f} ms: ratio {processes / emulated:.2f}")  # fmt: skip
    us = agreement_us()
    print(f"stop   agreement all-reduce: {us:.0f} us per step = {us / 10 / processes:.1f}% of a 2-process step")


if __name__ == "__main__":
    main()
