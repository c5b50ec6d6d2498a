#!/usr/bin/env python3
"""Balance benchmark: does `policy auto` bring a job with a slow device
close to the ideal for those device speeds?

One 4-rank run per case of tests/mpi/tiny4.yaml (configs/tiny.yaml's model
on four one-thread CPU ranks), rank 3 at `slowdown: 2.0` (emulated), the
default round-robin placement. The policy stays off for the first part of
the run, then `policy auto` is switched on with --at. Everything is read
from that run's metrics records:

  before   median tokens/s of the steps before the policy was switched on
           (round-robin placement)
  after    median tokens/s of the last third of the run
  ideal    median of the step records' ideal_tokens_per_s over the same
           steps as `before`: each step's measured time, less the part of
           its expert phase that the slowest rank of each layer added over
           an even finish (every layer's expert rows split over the ranks
           in proportion to their measured speeds). Taken under the
           starting placement, so that the figure does not move with the
           placement the policy chooses.

The first case is the issue's: configs/tiny.yaml's model, slowdown 2. The
others give the experts a larger share of the step (more, wider experts,
a slower device), where placement has more to win.

"Slow rank experts" counts replicas: a split expert is held by each rank
that computes a share of its rows.

usage: balance_bench.py MOECTL [--steps N] [--cases E:H:S[:B] ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_case(moectl, ranks, experts, hidden, steps, slowdown, switch_at, min_gain,
             every, workdir, batch=None):
    metrics = os.path.join(workdir, f"balance-{experts}-{hidden}-{slowdown}-"
                                    f"{batch}.jsonl")
    slow = ranks - 1
    args = [moectl, "run", os.path.join(ROOT, f"tests/mpi/tiny{ranks}.yaml"),
            "--headless", "--metrics", metrics,
            "--set", f"train.steps={steps}",
            "--set", f"moe.n_experts={experts}",
            "--set", f"moe.expert_hidden={hidden}",
            "--set", f"cluster.devices.{slow}.slowdown={slowdown}",
            "--set", "train.eval_every=0",
            "--set", "checkpoint.every=0",
            "--set", f"checkpoint.dir={workdir}/ckpt",
            "--at", f"{switch_at}:policy auto every {every} min-gain {min_gain}"]
    if batch:
        args += ["--set", f"train.batch_size={batch}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"balance_bench: {' '.join(args)} failed:\n{done.stderr}")
    records = [json.loads(line) for line in open(metrics)]
    by_step = {r["step"]: r for r in records if r["type"] == "step"}
    plans = [r for r in records if r["type"] == "plan"]
    results = [r for r in records if r["type"] == "plan_result"]
    warm = max(20, switch_at // 5)
    before = [by_step[s] for s in range(warm, switch_at + 1)]
    after = [by_step[s] for s in range(steps - steps // 3, steps + 1)]
    med = lambda rows, key: statistics.median(r[key] for r in rows)
    out = {
        "experts": experts,
        "before": med(before, "tokens_per_s"),
        "after": med(after, "tokens_per_s"),
        "ideal": med(before, "ideal_tokens_per_s"),
        "applied": sum(1 for p in plans if p["applied"]),
        "moves": sum(p["changes"] for p in plans if p["applied"]),
        "splits": max([len(p["splits"]) for p in plans if p["applied"]] or [0]),
        "results": results,
        "slow_experts_before": before[-1]["ranks"][slow]["experts"],
        "slow_experts_after": after[-1]["ranks"][slow]["experts"],
        "cost_before": med(before, "cost_per_mtok"),
        "cost_after": med(after, "cost_per_mtok"),
    }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("moectl")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--cases", nargs="+",
                    default=["4:64:2", "16:64:2", "16:256:2", "16:256:4",
                             "4:512:3:64"],
                    help="EXPERTS:EXPERT_HIDDEN:SLOWDOWN[:BATCH] per case "
                         "(BATCH: train.batch_size, default the config's 8)")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--ranks", type=int, default=4, choices=[2, 4])
    ap.add_argument("--min-gain", type=float, default=0.05,
                    help="policy auto's threshold (default: the config "
                         "default, 0.05)")
    ap.add_argument("--planner", help="test_planner binary (default: next "
                    "to MOECTL in the build tree)")
    a = ap.parse_args()
    switch_at = a.steps // 4
    print(f"balance bench: tests/mpi/tiny{a.ranks}.yaml, {a.ranks} CPU ranks, "
          f"rank {a.ranks - 1} "
          f"emulated slower, {a.steps} steps, policy auto (every {a.every}, "
          f"min-gain {a.min_gain:g}) from step {switch_at}")
    planner = a.planner or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(a.moectl))),
        "tests", "engine", "test_planner")
    print("planner " + planner_scale(planner) + " (target: under 1 s)")
    print(f"{'experts:hidden:slowdown':>23} {'before tok/s':>12} {'after tok/s':>11} "
          f"{'ideal tok/s':>11} {'before/ideal':>12} {'after/ideal':>11} "
          f"{'changes':>7} {'split':>5} {'slow rank experts':>17} "
          f"{'cost/1M before->after':>22}")
    with tempfile.TemporaryDirectory(prefix="moectl-balance-") as work:
        for case in a.cases:
            experts, hidden, slowdown, *batch = case.split(":")
            r = run_case(a.moectl, a.ranks, int(experts), int(hidden), a.steps,
                         float(slowdown), switch_at, a.min_gain, a.every,
                         work, int(batch[0]) if batch else None)
            print(f"{case:>23} {r['before']:>12,.0f} {r['after']:>11,.0f} "
                  f"{r['ideal']:>11,.0f} {r['before'] / r['ideal']:>12.1%} "
                  f"{r['after'] / r['ideal']:>11.1%} {r['moves']:>7} "
                  f"{r['splits']:>5} "
                  f"{r['slow_experts_before']:>8.0f} -> {r['slow_experts_after']:<6.0f} "
                  f"{r['cost_before']:>10.4g} -> {r['cost_after']:<9.4g}")
            for res in r["results"]:
                print(f"{'':>23} plan applied after step {res['applied_step']}: "
                      f"step {res['before_ms']:.3f} ms before, predicted "
                      f"{res['predicted_ms']:.3f}, measured {res['measured_ms']:.3f} "
                      f"over {res['steps']} steps")


def planner_scale(path):
    """The planner on 64 experts x 88 layers x 1,000 ranks: the scale case
    of tests/engine/test_planner.c, which prints its own timing."""
    done = subprocess.run([path], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("scale "):
            return line
    return f"{path}: no scale line (exit {done.returncode})"


if __name__ == "__main__":
    main()
