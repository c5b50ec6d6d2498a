#!/usr/bin/env python3
"""Memory benchmark: does per-rank memory fall as ranks are added?

A model whose expert state dominates: d_model 256, 4 layers, 32 routed
experts of width 1024 (top-2, no shared expert): 100.7M expert parameters,
1.61 GB of expert state (weights, gradient, two Adam moments; 16 bytes a
parameter) against 3.5M dense parameters. Trained for a few steps on 1, 2
and 4 CPU ranks of one thread (tests/mpi/tinyN.yaml's devices), the global
batch the same (4 sequences of 64 bytes), checkpointed at the end.

Everything is read from the run's last step record (`ranks[]`, measured
by each rank) and its checkpoint's manifest:

  expert state   the rank's expert store as allocated (expert_state_gb)
  dense          the replicated dense state
  activations    the model's activations and the expert rows it received
  staging        all-to-all and all-reduce staging, dispatch tables
  peak RSS       the most the rank's process was resident (VmHWM)
  shard          the bytes of its expert shard in the checkpoint

Targets (the issue's): expert state per rank = total / ranks within one
expert; max per-rank peak RSS on 2 ranks <= 0.6 x the 1-rank peak RSS.

usage: memory_bench.py MOECTL [--steps N] [--ranks 1 2 4]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
MODEL = ["model.d_model=256", "model.n_layers=4", "model.n_heads=4",
         "model.seq_len=64", "moe.n_experts=32", "moe.expert_hidden=1024",
         "moe.top_k=2", "moe.n_shared=0", "train.batch_size=4",
         "train.eval_every=0", "checkpoint.every=0", "checkpoint.keep=1"]


def run(moectl, ranks, steps, workdir):
    metrics = os.path.join(workdir, f"memory-{ranks}.jsonl")
    ckpt = os.path.join(workdir, f"ckpt-{ranks}")
    args = [moectl, "run", os.path.join(ROOT, f"tests/mpi/tiny{ranks}.yaml"),
            "--headless", "--steps", str(steps), "--metrics", metrics,
            "--set", "data.path=" + os.path.join(ROOT, "data", "kjv.txt"),
            "--set", "checkpoint.dir=" + ckpt]
    for s in MODEL:
        args += ["--set", s]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} exited {done.returncode}:\n"
                 f"{done.stderr[-3000:]}")
    records = [json.loads(line) for line in open(metrics)]
    run_record = records[0]
    last = [r for r in records if r["type"] == "step"][-1]
    path = [r for r in records if r["type"] == "checkpoint"][-1]["path"]
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    shards = {f["rank"]: f["bytes"] for f in manifest["shards"]}
    return run_record, last, shards


def gb(x):
    return f"{x:7.3f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("moectl")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    a = parser.parse_args()
    moectl = os.path.abspath(a.moectl)
    peak = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="moectl-memory-") as workdir:
        print("ranks rank experts  expert state  dense  activations  staging"
              "  peak RSS   shard  (GB, 1e9 bytes)")
        for n in a.ranks:
            run_record, last, shards = run(moectl, n, a.steps, workdir)
            expert = run_record["expert_state_bytes"] / 1e9
            total = expert * 4 * 32
            for q in last["ranks"]:
                print(f"{n:5d} {q['rank']:4d} {q['experts']:7d}  "
                      f"{gb(q['expert_state_gb'])}      "
                      f"{gb(q['dense_state_gb'])} {gb(q['activations_gb'])}"
                      f"      {gb(q['staging_gb'])} {gb(q['peak_rss_gb'])}  "
                      f"{gb(shards[q['rank']] / 1e9)}")
            worst = max(abs(q["expert_state_gb"] - total / n)
                        for q in last["ranks"])
            fits = worst <= expert
            ok &= fits
            peak[n] = max(q["peak_rss_gb"] for q in last["ranks"])
            print(f"      {n} rank(s): expert state per rank {total / n:.3f} "
                  f"GB wanted (total {total:.3f} / {n}); furthest off "
                  f"{worst * 1e3:.1f} MB, one expert is {expert * 1e3:.1f} MB:"
                  f" {'met' if fits else 'MISSED'}")
    if 1 in peak and 2 in peak:
        ratio = peak[2] / peak[1]
        ok &= ratio <= 0.6
        print(f"max per-rank peak RSS: 2 ranks {peak[2]:.3f} GB against 1 "
              f"rank {peak[1]:.3f} GB = {ratio:.2f}x (target <= 0.60x): "
              f"{'met' if ratio <= 0.6 else 'MISSED'}")
    if 4 in peak and 1 in peak:
        print(f"max per-rank peak RSS: 4 ranks {peak[4]:.3f} GB = "
              f"{peak[4] / peak[1]:.2f}x of 1 rank")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
