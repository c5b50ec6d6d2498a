#!/usr/bin/env python3
"""Multi-rank tests: moectl runs tests/mpi/tinyN.yaml (configs/tiny.yaml on
N one-thread CPU ranks) under mpirun, which `moectl run` starts itself.

usage: test_mpi.py CASE MOECTL SOURCE_ROOT [STANDIN_GPU_MODULE]

Stated tolerance: runs on different rank counts sum the replicated
gradients in a different order, so their losses agree closely but not bit
for bit: within a relative 1e-5 for the first 40 steps (measured: about
1e-7), and within 1e-3 through step 60, by when a near-tie in the router can
flip one token's expert (measured: 5e-5). Runs on the same
rank count with any placement, and with mid-run migrations, are identical
bit for bit: every expert sees the same rows in the same order wherever it
lives, and the gradient norm adds per-expert sums in a fixed order.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CASE, MOECTL, ROOT = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
STANDIN = sys.argv[4] if len(sys.argv) > 4 else None

# Under AddressSanitizer, OpenMPI's own allocations outlive MPI_Finalize
# in plugins it has unloaded, so LeakSanitizer cannot even name them: leak
# checking is off for multi-rank runs (address and UB checks stay on). The
# single-rank suites keep leak checking.
if "ASAN_OPTIONS" in os.environ:
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
# Other rank counts sum in another order: the losses agree within
# TOLERANCE (relative) for as long as every token is routed alike (the
# expert loads identical step by step), which must hold at least through
# step FIRST_FLIP. After a near-tie in the router flips one token's expert,
# the runs separate slowly: LATE_TOLERANCE. Measured on tiny: about 5e-8
# before the first flip (step 33), up to 2e-3 by step 60 after it.
TOLERANCE = 1e-5
LATE_TOLERANCE = 1e-2
FIRST_FLIP = 20


def require_close(other, one, what, first_flip=FIRST_FLIP):
    """Fails naming `what` when a step of `other` is out of tolerance
    against `one`; returns the worst relative loss difference."""
    bad = differing_steps(other, one, first_flip)
    if bad:
        fail(f"{what}: losses differ at steps {bad[:5]}: "
             f"{other[bad[0]]['loss']} vs {one[bad[0]]['loss']}")
    return max(abs(other[s]["loss"] - one[s]["loss"]) / one[s]["loss"]
               for s in other)


def differing_steps(other, one, first_flip=FIRST_FLIP):
    """Steps of `other` whose loss is out of tolerance against `one`."""
    flip = next((s for s in sorted(other)
                 if other[s]["expert_load"] != one[s]["expert_load"]), None)
    if flip is not None and flip <= first_flip:
        fail(f"routing differs as early as step {flip}: "
             f"{other[flip]['expert_load']} vs {one[flip]['expert_load']}")
    return [s for s in sorted(other)
            if abs(other[s]["loss"] - one[s]["loss"]) >
            (TOLERANCE if flip is None or s < flip else LATE_TOLERANCE) *
            abs(one[s]["loss"])]


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def config(ranks):
    return os.path.join(ROOT, "tests", "mpi", f"tiny{ranks}.yaml")


def train(tmp, name, ranks, extra=(), sets=(), check=True, env=None):
    metrics = os.path.join(tmp, name + ".jsonl")
    args = [MOECTL, "run", config(ranks), "--metrics", metrics,
            "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, name)]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(args + list(extra), cwd=tmp, capture_output=True,
                       text=True, timeout=300, env=env)
    if check and p.returncode != 0:
        fail(f"{' '.join(args + list(extra))} exited {p.returncode}:\n"
             f"{p.stderr[-3000:]}")
    records = [json.loads(l) for l in open(metrics)] if os.path.exists(
        metrics) else []
    return records, p


def steps(records):
    return {r["step"]: r for r in records if r["type"] == "step"}


def exact(r):
    return (repr(r["loss"]), repr(r["grad_norm"]), repr(r["aux_loss"]),
            repr(r["z_loss"]), r["expert_load"])


def case_rank_invariance(tmp):
    runs = {n: steps(train(tmp, f"r{n}", n, ["--steps", "60"])[0])
            for n in (1, 2, 4)}
    one = runs[1]
    for n in (2, 4):
        other = runs[n]
        if sorted(other) != sorted(one):
            fail(f"{n} ranks trained steps {sorted(other)[:3]}...")
        # Step 1 starts from the same weights: the forward is the same up
        # to how the loss shares are added.
        first, ref = other[1], one[1]
        if first["expert_load"] != ref["expert_load"] or any(
                abs(first[k] - ref[k]) > TOLERANCE * abs(ref[k])
                for k in ("loss", "aux_loss", "z_loss", "grad_norm")):
            fail(f"step 1 on {n} ranks differs: {exact(first)} vs "
                 f"{exact(ref)}")
        worst = require_close(other, one, f"{n} ranks")
        ranks = other[60]["ranks"]
        if len(ranks) != n or sum(r["experts"] for r in ranks) != 2 * 4:
            fail(f"ranks field on {n} ranks: {ranks}")
        print(f"{n} ranks vs 1: step 1 identical, worst relative loss "
              f"difference {worst:.1e} over 60 steps")


def case_rank_invariance_balance(tmp):
    """1 and 2 ranks with bias balancing and the routing warm-up on. The
    warm-up noise is keyed by global token index and the logit statistics
    are summed per sequence in a fixed order, and the bias moves by global
    loads, so routing is rank-invariant as long as the weights agree: the
    expert loads are identical step for step until a near-tie flips one
    token (measured: identical through step 40). After that the biases
    differ by 2u, and the runs separate faster than without balancing:
    stated tolerance 1e-5 relative through step 30 (measured about 3e-7),
    2e-2 through step 60 (measured 5e-3)."""
    sets = ("balance.bias_update_rate=0.001",
            "balance.routing_warmup_steps=50")
    runs = {n: steps(train(tmp, f"b{n}", n, ["--steps", "60"], sets)[0])
            for n in (1, 2)}
    one, two = runs[1], runs[2]
    if sorted(two) != sorted(one):
        fail(f"2 ranks trained steps {sorted(two)[:3]}...")
    for s in range(1, 21):
        if two[s]["expert_load"] != one[s]["expert_load"]:
            fail(f"step {s}: expert loads differ between 1 and 2 ranks: "
                 f"{one[s]['expert_load']} vs {two[s]['expert_load']}")
    for s in one:
        limit = 1e-5 if s <= 30 else 2e-2
        if abs(two[s]["loss"] - one[s]["loss"]) > limit * one[s]["loss"]:
            fail(f"step {s}: loss {two[s]['loss']} on 2 ranks, "
                 f"{one[s]['loss']} on 1")
    same = sum(one[s]["expert_load"] == two[s]["expert_load"] for s in one)
    worst = max(abs(two[s]["loss"] - one[s]["loss"]) / one[s]["loss"]
                for s in one)
    print(f"2 ranks vs 1 with balancing: loads identical at {same} of 60 "
          f"steps, worst relative loss difference {worst:.1e}")
    # Resuming on 2 ranks inside the warm-up: every rank gets the bias and
    # the logit statistics, so the run continues bit for bit.
    train(tmp, "bhalf", 2, ["--steps", "30"], sets)
    records, _ = train(tmp, "bresumed", 2,
                       ["--resume", os.path.join(tmp, "bhalf"),
                        "--steps", "60"],
                       ("checkpoint.dir=" + os.path.join(tmp, "bresumed"),)
                       + sets)
    resumed = steps(records)
    if sorted(resumed) != list(range(31, 61)):
        fail(f"resumed steps {sorted(resumed)[:3]}")
    for s in resumed:
        if exact(resumed[s]) != exact(two[s]):
            fail(f"step {s} after resuming on 2 ranks differs:\n"
                 f"{exact(two[s])}\n{exact(resumed[s])}")
    print("resumed on 2 ranks at step 30: steps 31..60 bit-identical")


def case_migration(tmp):
    base = steps(train(tmp, "base", 2, ["--steps", "40"])[0])
    records, _ = train(tmp, "moved", 2,
                       ["--steps", "40", "--at", "10:move 0.0 1",
                        "--at", "10:move 1.3 0", "--at", "25:move 1.2 1"])
    moved = steps(records)
    for s in base:
        if exact(base[s]) != exact(moved[s]):
            fail(f"step {s} differs after migrations:\n{exact(base[s])}\n"
                 f"{exact(moved[s])}")
    before, after = moved[10]["placement"], moved[11]["placement"]
    if before[0][0] != 0 or after[0][0] != 1 or after[1][3] != 0:
        fail(f"placement did not follow the moves: {before} -> {after}")
    if moved[26]["placement"][1][2] != 1 or moved[40]["placement_version"] != 4:
        fail(f"placement at 26: {moved[26]['placement']}, version "
             f"{moved[40]['placement_version']}")
    events = [r["command"] for r in records if r["type"] == "event"]
    if events != ["move 0.0 1", "move 1.3 0", "move 1.2 1"]:
        fail(f"events {events}")
    moved_bytes = sum(r["migration_bytes"] for r in moved[40]["ranks"])
    if moved_bytes <= 0:
        fail("no migration bytes counted")
    # An initial placement from the configuration: also identical.
    placed = steps(train(tmp, "placed", 2, ["--steps", "40"],
                         ["cluster.placement=1 1 0 0; 0 1 1 0"])[0])
    if placed[1]["placement"] != [[1, 1, 0, 0], [0, 1, 1, 0]]:
        fail(f"configured placement not used: {placed[1]['placement']}")
    for s in base:
        if exact(base[s]) != exact(placed[s]):
            fail(f"step {s} differs under the configured placement")
    print("3 migrations and a configured placement: 40 steps bit-identical to the run without them")


def case_split(tmp):
    """Split experts on 4 ranks: an expert's rows shared among replicas in
    set proportions. Each replica computes its share's gradient and the
    parts are added in the step's all-reduce, a different order of the same
    sum: stated tolerance 1e-5 relative over 40 steps against the unsplit
    run (measured about 1e-6), identical through the split step. At step
    25 expert 0.1 is moved, whole, to rank 0, which already holds a replica:
    nothing is shipped and training goes on from that replica, so a
    replica that had missed an update would show at once."""
    base = steps(train(tmp, "whole", 4, ["--steps", "40"])[0])
    records, _ = train(tmp, "split", 4,
                       ["--steps", "40", "--at", "10:split 0.1 1:1 0:3",
                        "--at", "10:split 1.3 1 0 2 3",
                        "--at", "20:split 0.0 0:1 3:2",
                        "--at", "25:move 0.1 0"])
    split = steps(records)
    for s in range(1, 11):
        if exact(split[s]) != exact(base[s]):
            fail(f"step {s} differs before the split took effect:\n"
                 f"{exact(base[s])}\n{exact(split[s])}")
    worst = 0.0
    for s in base:
        if split[s]["expert_load"] != base[s]["expert_load"]:
            fail(f"step {s}: routing changed: {base[s]['expert_load']} vs "
                 f"{split[s]['expert_load']}")
        rel = abs(split[s]["loss"] - base[s]["loss"]) / base[s]["loss"]
        worst = max(worst, rel)
        if rel > TOLERANCE:
            fail(f"step {s}: loss {split[s]['loss']} split, "
                 f"{base[s]['loss']} whole")
    events = {r["command"]: r["reply"] for r in records
              if r["type"] == "event"}
    want = {"split 0.1 1:1 0:3": "rank 1 25.0% rank 0 75.0%",
            "split 1.3 1:1 0:1 2:1 3:1": "rank 1 25.0% rank 0 25.0% rank 2 "
                                         "25.0% rank 3 25.0%",
            "split 0.0 0:1 3:2": "rank 0 33.3% rank 3 66.7%",
            "move 0.1 0": "(0 bytes moved"}
    for command, text in want.items():
        if text not in events.get(command, ""):
            fail(f"{command}: reply {events.get(command)!r}, want {text!r}")
    # 1.3 lived on rank 3; ranks 1 (its new rank), 0 and 2 each got a copy.
    if "(221184 bytes shipped" not in events["split 1.3 1:1 0:1 2:1 3:1"]:
        fail(f"split 1.3 shipped: {events['split 1.3 1:1 0:1 2:1 3:1']}")
    if split[40]["placement"][0][1] != 0 or split[40]["placement"][1][3] != 1:
        fail(f"placement {split[40]['placement']}")
    print(f"4 experts split and one moved onto its replica: 40 steps within "
          f"{worst:.1e} of the unsplit run, routing identical")


def case_gpu_rank(tmp):
    """tiny on 2 ranks, the second a CUDA device, against the same run on 2
    CPU ranks. Skipped (77) where no CUDA device can be used. Stated
    tolerance: the GPU kernels add in other orders than the CPU's (and
    cuBLAS picks its own GEMM algorithms), so losses agree within 1e-4
    relative over 20 steps and routing is identical for the first 5."""
    gpu = ("cluster.devices.1.backend=cuda", "cluster.devices.1.index=0")
    records, p = train(tmp, "gpu", 2, ["--steps", "20"], gpu, check=False)
    if p.returncode != 0:
        reason = p.stderr.strip().splitlines()[-1:] or [""]
        if "no usable device" in p.stderr or "built without" in p.stderr \
                or "no device" in p.stderr:
            print(f"skipped: {reason[0]}")
            sys.exit(77)
        fail(f"the run with a CUDA rank exited {p.returncode}:\n"
             f"{p.stderr[-3000:]}")
    mixed = steps(records)
    cpu = steps(train(tmp, "cpu", 2, ["--steps", "20"])[0])
    for s in cpu:
        if abs(mixed[s]["loss"] - cpu[s]["loss"]) > 1e-4 * cpu[s]["loss"]:
            fail(f"step {s}: loss {mixed[s]['loss']} with a CUDA rank, "
                 f"{cpu[s]['loss']} on CPUs")
        if s <= 5 and mixed[s]["expert_load"] != cpu[s]["expert_load"]:
            fail(f"step {s}: routing differs with a CUDA rank")
    worst = max(abs(mixed[s]["loss"] - cpu[s]["loss"]) / cpu[s]["loss"]
                for s in cpu)
    print(f"a CUDA rank beside a CPU rank: 20 steps within {worst:.1e} of "
          f"two CPU ranks")


def standin(extra=None):
    """The environment that makes a `cuda` device load the stand-in module
    (tests/mpi/standin_gpu.c: the CPU reference behind the GPU module's
    exports)."""
    env = dict(os.environ, MOECTL_GPU_LIB=STANDIN)
    env.pop("MOECTL_STANDIN_FAIL_AT", None)
    env.update(extra or {})
    return env


STANDIN_RANK = ("cluster.devices.1.backend=cuda", "cluster.devices.1.index=0")


def case_standin_gpu_rank(tmp):
    """The trainer's GPU path on a machine without a GPU: rank 1 is a `cuda`
    device served by the stand-in module, so the module is loaded, its
    table and allocator carry the rank's model, and experts migrate to and
    from it. The math is the CPU reference's, so the run must equal the
    all-CPU run bit for bit. A `hip` device given a module that drives
    cuda is refused on every rank, with the reason, and nothing hangs."""
    moves = ["--steps", "30", "--at", "10:move 0.0 1", "--at",
             "10:move 1.3 0", "--at", "20:move 1.2 1"]
    records, p = train(tmp, "standin", 2, moves, STANDIN_RANK,
                       check=False, env=standin())
    if p.returncode != 0:
        fail(f"the run with a stand-in cuda rank exited {p.returncode}:\n"
             f"{p.stderr[-3000:]}")
    mixed = steps(records)
    if mixed[1]["ranks"][1]["backend"] != "cuda":
        fail(f"rank 1 is not reported as cuda: {mixed[1]['ranks'][1]}")
    cpu = steps(train(tmp, "cpu", 2, moves)[0])
    if sorted(mixed) != sorted(cpu) or len(cpu) != 30:
        fail(f"steps {sorted(mixed)[:3]}... against {sorted(cpu)[:3]}...")
    for s in cpu:
        if exact(mixed[s]) != exact(cpu[s]):
            fail(f"step {s}: {exact(mixed[s])[:2]} with the stand-in cuda "
                 f"rank, {exact(cpu[s])[:2]} on two CPU ranks")
    if mixed[30]["placement"] == mixed[1]["placement"]:
        fail("the moves did not happen")
    # A module that drives another kind is refused before training.
    hip = ("cluster.devices.1.backend=hip", "cluster.devices.1.index=0")
    start = time.time()
    _, p = train(tmp, "hip", 2, ["--steps", "5"], hip, check=False,
                 env=standin())
    took = time.time() - start
    if p.returncode != 1 or "drives cuda, not hip" not in p.stderr:
        fail(f"a hip device on a cuda module exited {p.returncode}:\n"
             f"{p.stderr[-2000:]}")
    if "MPI_ABORT" in p.stderr or "mpirun has exited" in p.stderr:
        fail(f"the refused start went through MPI_Abort:\n{p.stderr}")
    print(f"stand-in cuda rank: 30 steps with 3 moves equal to two CPU "
          f"ranks bit for bit; a hip device on a cuda module refused in "
          f"{took:.1f} s")


def case_device_failure(tmp):
    """A device that fails mid-run (the stand-in module reports an error
    from its 12th step on, as a GPU backend reports a runtime error): every
    rank stops at that step, the failing rank alone says why, nothing
    aborts or hangs, step 12 reaches neither the metrics nor a
    checkpoint, and the newest checkpoint (step 10) resumes on CPU ranks
    into the same losses as a run that never failed. Also on one rank."""
    sets = STANDIN_RANK + ("checkpoint.every=5", "train.eval_every=0")
    env = standin({"MOECTL_STANDIN_FAIL_AT": "12"})
    start = time.time()
    records, p = train(tmp, "broken", 2, ["--steps", "40"], sets,
                       check=False, env=env)
    took = time.time() - start
    if p.returncode != 1:
        fail(f"a failed device: exit {p.returncode}, want 1:\n"
             f"{p.stderr[-3000:]}")
    want = ("rank 1: device cpu1 failed in step 12, which was discarded: "
            "stand-in device: failure injected")
    if want not in p.stderr:
        fail(f"no {want!r} in:\n{p.stderr[-3000:]}")
    if "; the newest checkpoint is " + os.path.join(tmp, "broken",
                                                   "step-00000010") \
            not in p.stderr:
        fail(f"the reason does not name the checkpoint to resume from:\n"
             f"{p.stderr[-3000:]}")
    if "rank 0:" in p.stderr:
        fail(f"rank 0 also reported the failure:\n{p.stderr[-3000:]}")
    if "MPI_ABORT" in p.stderr or "mpirun has exited" in p.stderr:
        fail(f"the failure went through MPI_Abort:\n{p.stderr[-3000:]}")
    done = sorted(steps(records))
    if done != list(range(1, 12)):
        fail(f"steps in the metrics: {done[:3]}...{done[-3:]}, want 1..11")
    ckpt = os.path.join(tmp, "broken")
    newest = whole_checkpoints(ckpt)
    if not newest or newest[-1] != 10:
        fail(f"checkpoints after the failure: {newest}")
    resumed = steps(train(tmp, "resumed", 2,
                          ["--resume", ckpt, "--steps", "14"],
                          ["checkpoint.dir=" + os.path.join(tmp, "r2")])[0])
    whole = steps(train(tmp, "whole", 2, ["--steps", "14"])[0])
    for s in (11, 12, 13, 14):
        if exact(resumed[s]) != exact(whole[s]):
            fail(f"step {s} after resuming: {exact(resumed[s])[:2]}, "
                 f"{exact(whole[s])[:2]} without the failure")
    one_sets = ("cluster.devices.0.backend=cuda", "cluster.devices.0.index=0",
                "train.eval_every=0")
    _, q = train(tmp, "one", 1, ["--steps", "20"], one_sets, check=False,
                 env=env)
    if q.returncode != 1 or "failed in step 12, which was discarded" \
            not in q.stderr:
        fail(f"one rank: exit {q.returncode}:\n{q.stderr[-2000:]}")
    print(f"device failure at step 12: all ranks ended in {took:.1f} s, "
          f"rank 1 said why, step 10's checkpoint resumed bit for bit")


def case_resume_ranks(tmp):
    """1 -> 4 -> 2 ranks: a 1-rank checkpoint at step 20 resumed on 4 ranks
    (experts re-sharded from the one shard), whose checkpoint at step 40 is
    resumed on 2 (each rank reads its experts from the 4 shards), continue
    the 1-rank trajectory within the rank-count tolerance. A 2-rank
    checkpoint resumed on 2 ranks keeps its placement; on 4 it re-places."""
    full = steps(train(tmp, "full", 1, ["--steps", "60"])[0])
    train(tmp, "one", 1, ["--steps", "20"])
    four = steps(train(tmp, "four", 4,
                       ["--resume", os.path.join(tmp, "one"), "--steps", "40"],
                       ["checkpoint.dir=" + os.path.join(tmp, "four")])[0])
    two = steps(train(tmp, "two", 2,
                      ["--resume", os.path.join(tmp, "four"), "--steps", "60"],
                      ["checkpoint.dir=" + os.path.join(tmp, "two")])[0])
    if sorted(four) != list(range(21, 41)) or sorted(two) != list(range(41,
                                                                      61)):
        fail(f"resumed steps {sorted(four)[:3]}, {sorted(two)[:3]}")
    resumed = {**four, **two}
    worst = require_close(resumed, full, "1 -> 4 -> 2 ranks", first_flip=25)
    if {r for row in four[21]["placement"] for r in row} != {0, 1, 2, 3}:
        fail(f"experts were not re-placed over 4 ranks: {four[21]['placement']}")
    shards = json.load(open(os.path.join(tmp, "four", "step-00000040",
                                         "manifest.json")))["shards"]
    if [f["experts"] for f in shards] != [2, 2, 2, 2]:
        fail(f"the 4-rank checkpoint's shards: {shards}")
    # A 2-rank checkpoint resumed on 2 ranks keeps its placement.
    back = steps(train(tmp, "back", 2, ["--resume", os.path.join(tmp, "two"),
                                         "--steps", "62"],
                       ["checkpoint.dir=" + os.path.join(tmp, "back")])[0])
    if back[61]["placement"] != two[60]["placement"]:
        fail(f"a 2-rank checkpoint resumed on 2 ranks re-placed: "
             f"{back[61]['placement']} vs {two[60]['placement']}")
    # A shard only rank 1 reads, truncated: every rank fails the resume with
    # rank 1's reason, and none waits for the others.
    step_dir = os.path.join(tmp, "two", "step-00000060")
    shard = os.path.join(step_dir, next(f for f in os.listdir(step_dir)
                                        if f.startswith("experts-r0001-")))
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    start = time.time()
    _, p = train(tmp, "broken", 2, ["--resume", step_dir, "--steps", "62"],
                 ["checkpoint.dir=" + os.path.join(tmp, "broken")],
                 check=False)
    if p.returncode == 0 or "truncated or corrupt" not in p.stderr or \
            "experts-r0001-" not in p.stderr:
        fail(f"a truncated shard of rank 1: exit {p.returncode}\n"
             f"{p.stderr[-2000:]}")
    print(f"a truncated shard: refused on every rank in "
          f"{time.time() - start:.1f} s")
    # A placement that empties a rank survives a resume on as many ranks.
    moves = []
    for layer in (0, 1):
        for expert in (1, 3):  # round-robin put these on rank 1
            moves += ["--at", f"5:move {layer}.{expert} 0"]
    emptied = steps(train(tmp, "empty", 2, ["--steps", "10"] + moves,
                          ["checkpoint.dir=" + os.path.join(tmp, "empty")])[0])
    if any(r != 0 for row in emptied[10]["placement"] for r in row):
        fail(f"the moves did not empty rank 1: {emptied[10]['placement']}")
    again = steps(train(tmp, "empty2", 2,
                        ["--resume", os.path.join(tmp, "empty"),
                         "--steps", "12"],
                        ["checkpoint.dir=" + os.path.join(tmp, "empty2")])[0])
    if again[11]["placement"] != emptied[10]["placement"]:
        fail(f"an emptied rank's placement was reset on resume: "
             f"{again[11]['placement']}")
    print("a placement that empties rank 1 survived the resume")
    print(f"1 -> 4 -> 2 ranks at steps 20 and 40: worst relative difference "
          f"{worst:.1e} against 1 rank throughout")


def rank_pid(parent, rank):
    """The pid of MPI rank `rank` in the session `parent` leads."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        try:
            ours = os.getsid(int(pid)) == parent  # this test's job only
        except OSError:
            continue
        if (ours and b"OMPI_COMM_WORLD_RANK=%d" % rank in env
                and b"moectl" in cmd and b"mpirun" not in cmd.split(b"\0")[0]):
            return int(pid)
    return None


def cpu_seconds(pid):
    """User and system CPU seconds process `pid` has used."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def case_memory_refusal(tmp):
    """A move that would put a rank's model state (dense state and its
    experts, the planner's measure) over its memory_gb is refused with the
    figures, and training goes on bit for bit as without the command; the
    step records carry each rank's memory by kind, and each rank holds the
    state of its own experts only."""
    base, _ = train(tmp, "base", 2, ["--steps", "14"])
    run = base[0]
    dense, expert = run["dense_state_bytes"], run["expert_state_bytes"]
    if not 0 < expert < dense:
        fail(f"run record: dense {dense}, expert {expert} bytes")
    ranks = steps(base)[14]["ranks"]
    for q in ranks:
        held = q["expert_state_gb"] * 1e9
        if abs(held - q["experts"] * expert) > 1 or q["experts"] != 4:
            fail(f"rank {q['rank']} holds {held:.0f} bytes of expert state "
                 f"for {q['experts']} experts of {expert}")
        for k in ("dense_state_gb", "activations_gb", "staging_gb",
                  "peak_rss_gb"):
            if not q[k] or q[k] <= 0:
                fail(f"rank {q['rank']}: {k} = {q[k]}")
    # Room for rank 1's four experts and half of another.
    room = (dense + 4.5 * expert) / 1e9
    records, _ = train(tmp, "tight", 2,
                       ["--steps", "14", "--at", "10:move 0.0 1",
                        "--at", "11:move 0.1 0"],
                       [f"cluster.devices.1.memory_gb={room!r}"])
    events = {r["command"]: r for r in records if r["type"] == "event"}
    refused, allowed = events.get("move 0.0 1"), events.get("move 0.1 0")
    if not refused or refused["ok"] or "does not fit on rank 1" not in \
            refused["reply"] or "memory_gb" not in refused["reply"]:
        fail(f"the move over memory_gb was not refused with the figures: "
             f"{refused}")
    if not allowed or not allowed["ok"]:
        fail(f"the move within memory was refused: {allowed}")
    tight, plain = steps(records), steps(base)
    for s in range(1, 12):
        if exact(tight[s]) != exact(plain[s]):
            fail(f"step {s} differs after the refused move")
    if tight[11]["placement"] != plain[11]["placement"] or \
            tight[12]["placement"][0][1] != 0:
        fail(f"placements: {tight[11]['placement']}, {tight[12]['placement']}")
    # A starting placement over memory_gb does not start.
    too_small = (dense + 3.5 * expert) / 1e9
    _, p = train(tmp, "small", 2, ["--steps", "2"],
                 [f"cluster.devices.1.memory_gb={too_small!r}"], check=False)
    if p.returncode == 0 or "cluster.devices[1].memory_gb" not in p.stderr \
            or "starts with 4 experts" not in p.stderr:
        fail(f"a placement over memory_gb started: exit {p.returncode}\n"
             f"{p.stderr[-2000:]}")
    print(f"refused: {refused['reply']}")
    print("and at the start: " + next(l for l in p.stderr.splitlines()
                                      if "memory_gb" in l))


def case_batch_shares(tmp):
    """Ranks train uneven shares of the global batch
    (cluster.devices[].batch_share): the loss is normalised over the global
    batch, so 2 ranks at 3:1 follow the 1-rank run within the rank-count
    tolerance, as 1:1 does; the step records give each rank's rows; a batch
    that does not divide by the rank count is split, not refused."""
    one = steps(train(tmp, "one", 1, ["--steps", "40"])[0])
    even = steps(train(tmp, "even", 2, ["--steps", "40"])[0])
    uneven = steps(train(tmp, "uneven", 2, ["--steps", "40"],
                         ["cluster.devices.0.batch_share=3"])[0])
    rows = [q["rows"] for q in uneven[1]["ranks"]]
    if rows != [6, 2] or [q["rows"] for q in even[1]["ranks"]] != [4, 4]:
        fail(f"rows per rank: {rows}")
    require_close(even, one, "shares 1:1")
    # The same two ranks from --set alone (no YAML file of their own):
    # the 1-rank file's list replaced, then an entry appended; the same
    # run as tiny2.yaml's, bit for bit.
    entry = ("{name: %s, backend: cpu, threads: 1, price_per_hour: 0.05, "
             "peak_tflops: 0.5, memory_gb: 24}")
    listed_records = train(tmp, "listed", 1, ["--steps", "40"],
                           ["cluster.devices=[" + entry % "cpu0" + "]",
                            "cluster.devices+=" + entry % "cpu1"])[0]
    listed = steps(listed_records)
    names = [d["name"] for d in listed_records[0]["devices"]]
    if names != ["cpu0", "cpu1"] or len(listed[1]["ranks"]) != 2 or any(
            exact(listed[s]) != exact(even[s]) for s in even):
        fail(f"the run from --set lists ({names}) is not tiny2.yaml's")
    yamls = [f for f in os.listdir(tmp) if f.endswith((".yaml", ".yml"))]
    if yamls:
        fail(f"a run from --set lists wrote YAML files: {yamls}")
    worst = require_close(uneven, one, "shares 3:1")
    # With the routing warm-up and bias balancing, whose statistics and
    # noise are keyed by global sequence and token: routed alike.
    sets = ("balance.bias_update_rate=0.001",
            "balance.routing_warmup_steps=50")
    bal_one = steps(train(tmp, "bal1", 1, ["--steps", "20"], sets)[0])
    bal_two = steps(train(tmp, "bal2", 2, ["--steps", "20"],
                          sets + ("cluster.devices.0.batch_share=3",))[0])
    for s in bal_one:
        if bal_one[s]["expert_load"] != bal_two[s]["expert_load"]:
            fail(f"shares 3:1 with balancing: step {s} routes differently")
    odd = steps(train(tmp, "odd", 2, ["--steps", "2"],
                      ["train.batch_size=7"])[0])
    if [q["rows"] for q in odd[1]["ranks"]] != [4, 3]:
        fail(f"batch 7 on 2 ranks: {odd[1]['ranks']}")
    # Live: `shares` at step boundaries; the rows follow from the next step.
    live_records, _ = train(tmp, "live", 2, ["--steps", "40", "--at",
                                             "10:shares 3 1", "--at",
                                             "25:shares 1 3"])
    live = steps(live_records)
    got = [[q["rows"] for q in live[s]["ranks"]] for s in (10, 11, 26)]
    if got != [[4, 4], [6, 2], [2, 6]]:  # 3:1 and 1:3 of 8
        fail(f"rows around the shares commands: {got}")
    replies = [r["reply"] for r in live_records if r["type"] == "event" and
               r["command"].startswith("shares")]
    if replies != ["rows from step 11: rank 0 6 rank 1 2",
                   "rows from step 26: rank 0 2 rank 1 6"]:
        fail(f"shares replies: {replies}")
    require_close(live, one, "live shares")
    # Bad values are refused with the reason, before anything starts.
    for words, why in (("shares 3", "one weight each; got 1"),
                       ("shares 3 0", "integer weight 1..1000")):
        _, p = train(tmp, "badshares", 2, ["--steps", "2", "--at",
                                           "1:" + words], check=False)
        if p.returncode != 2 or why not in p.stderr:
            fail(f"{words!r}: exit {p.returncode}: {p.stderr[-500:]}")
    # Resumed with other shares: the checkpoint of an even run goes on at
    # 1:3 within the tolerance.
    resumed = steps(train(tmp, "resharded", 2,
                          ["--resume", os.path.join(tmp, "even"), "--steps",
                           "50"],
                          ["cluster.devices.1.batch_share=3",
                           "checkpoint.dir=" + os.path.join(tmp, "rs")])[0])
    full = steps(train(tmp, "one50", 1, ["--steps", "50"])[0])
    if [q["rows"] for q in resumed[41]["ranks"]] != [2, 6]:
        fail(f"resumed rows: {resumed[41]['ranks']}")
    require_close(resumed, full, "resumed at 1:3", first_flip=40)
    print(f"shares 3:1 (rows {rows}) against 1 rank: worst relative loss "
          f"difference {worst:.1e} over 40 steps; batch 7 split 4 + 3")


def whole_checkpoints(ckpt):
    """Steps of the whole checkpoints in ckpt (a manifest in place)."""
    return sorted(int(f[5:13]) for f in os.listdir(ckpt)
                  if f.startswith("step-") and
                  os.path.exists(os.path.join(ckpt, f, "manifest.json")))


def unfinished(ckpt):
    """What a write cut short leaves: a step directory without a manifest,
    or files still under their temporary names."""
    left = []
    for f in os.listdir(ckpt):
        d = os.path.join(ckpt, f)
        if not os.path.isdir(d):
            continue
        if not os.path.exists(os.path.join(d, "manifest.json")):
            left.append(f + "/ (no manifest)")
        left += [f + "/" + g for g in os.listdir(d) if g.endswith(".tmp")]
    return left


def stop_inside_write(ckpt, victim, deadline):
    """Watches ckpt for rank 1's shard under its temporary name, stops rank
    1 there (SIGSTOP) and returns the step directory whose write it is
    inside: its manifest cannot appear while rank 1 is stopped, since rank
    0 writes it only after every rank has said its shard is written. A
    stop that came after the manifest was in place is undone (SIGCONT) and
    the watch goes on. None at the deadline."""
    while time.time() < deadline:
        try:
            dirs = sorted(f for f in os.listdir(ckpt) if f.startswith("step-"))
        except FileNotFoundError:
            continue
        for d in dirs[-1:]:
            path = os.path.join(ckpt, d)
            try:
                names = os.listdir(path)
            except FileNotFoundError:
                continue
            if not any(n.startswith("experts-r0001-") and n.endswith(".tmp")
                       for n in names):
                continue
            os.kill(victim, signal.SIGSTOP)
            if not os.path.exists(os.path.join(path, "manifest.json")):
                return d
            os.kill(victim, signal.SIGCONT)
    return None


def case_kill_rank(tmp):
    """kill -9 of rank 1 while it writes its checkpoint shard (stopped there
    first, from watching the checkpoint directory), in a 2-rank job that
    checkpoints every step: the job ends within seconds naming rank 1, the
    unfinished checkpoint is no checkpoint (no manifest), and the previous
    one is whole and resumes."""
    metrics = os.path.join(tmp, "k.jsonl")
    ckpt = os.path.join(tmp, "k")
    args = [MOECTL, "run", config(2), "--metrics", metrics,
            "--set", "data.path=" + CORPUS, "--set", "checkpoint.dir=" + ckpt,
            "--set", "train.steps=1000000", "--set", "checkpoint.every=1",
            "--set", "checkpoint.keep=2", "--set", "train.eval_every=0"]
    p = subprocess.Popen(args, cwd=tmp, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(metrics) and \
                open(metrics).read().count('"checkpoint"') >= 3:
            break
        time.sleep(0.01)
    victim = rank_pid(p.pid, 1)
    inside = stop_inside_write(ckpt, victim, time.time() + 60) \
        if victim is not None else None
    if inside is None:
        os.killpg(p.pid, signal.SIGKILL)
        fail("could not find rank 1, or catch it writing its shard")
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        fail("the job hung after rank 1 was killed")
    took = time.time() - killed_at
    if p.returncode == 0:
        fail("the job reported success after losing a rank")
    if "rank 1" not in err:
        fail(f"the reason does not name rank 1:\n{err[-2000:]}")
    line = next(l for l in err.splitlines() if "rank 1" in l)
    left = unfinished(ckpt)
    if not any(x.startswith(inside) for x in left):
        fail(f"{inside} was cut short but looks whole: {left}")
    step = whole_checkpoints(ckpt)[-1]
    if step >= int(inside[5:13]):
        fail(f"the cut-short {inside} counts as checkpoint {step}")
    records, _ = train(tmp, "after", 2,
                       ["--resume", ckpt, "--steps", str(step + 2)],
                       ["train.steps=1000000", "train.eval_every=0",
                        "checkpoint.dir=" + ckpt + "-after"])
    if sorted(steps(records)) != [step + 1, step + 2]:
        fail(f"could not resume from the checkpoint of step {step}")
    print(f"kill -9 of rank 1 inside the write of {inside}: the job ended "
          f"{took:.1f} s later ({line.strip()}); left {left}; the previous "
          f"checkpoint, step {step}, resumed")


def stopped_by_signal(tmp, name, sig, paused):
    """Sends `sig` to a 2-rank job, running or paused (a paused job waits
    in its pause loop); returns the job's summary record."""
    metrics = os.path.join(tmp, name + ".jsonl")
    sock = os.path.join(tmp, name + ".sock")
    os.chmod(tmp, 0o700)
    args = [MOECTL, "run", config(2), "--metrics", metrics, "--socket", sock,
            "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, name),
            "--set", "train.steps=1000000", "--set", "train.eval_every=0"]
    p = subprocess.Popen(args, cwd=tmp, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(metrics) and
                 open(metrics).read().count('"type":"step"') > 5, "steps")
        if paused:
            rc, out, _ = ctl(sock, "pause")
            if rc != 0:
                fail(f"pause: {rc} {out}")
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    what = f"{signal.Signals(sig).name}{' while paused' if paused else ''}"
    if p.returncode != 3:
        fail(f"{what}: exit {p.returncode}, want 3\n{err[-2000:]}")
    summary = [json.loads(l) for l in open(metrics)][-1]
    if summary["status"] != "stopped" or not os.path.exists(
            summary["checkpoint"]):
        fail(f"after {what}: {summary}")
    return summary


def case_signal(tmp):
    """SIGINT to a 2-rank job: every rank stops at the same step, rank 0
    writes a checkpoint, and the job exits 3 like a one-rank run. SIGTERM
    to a paused job does the same (it used to wait for a resume until
    mpirun killed it, exit 1, no checkpoint)."""
    running = stopped_by_signal(tmp, "s", signal.SIGINT, False)
    paused = stopped_by_signal(tmp, "p", signal.SIGTERM, True)
    # A hang-up of the launcher (its terminal closed) stops every rank with
    # a checkpoint too, rather than orphaning mpirun and the ranks.
    hung = stopped_by_signal(tmp, "h", signal.SIGHUP, False)
    # mpirun killed outright: the launcher says so and how to continue.
    metrics = os.path.join(tmp, "k.jsonl")
    p = subprocess.Popen(
        [MOECTL, "run", config(2), "--metrics", metrics, "--name", "killed",
         "--set", "data.path=" + CORPUS, "--set", "train.steps=1000000",
         "--set", "train.eval_every=0"], cwd=tmp, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(metrics) and
                 open(metrics).read().count('"type":"step"') > 5, "steps")
        mpirun = subprocess.run(["pgrep", "-P", str(p.pid), "mpirun"],
                                capture_output=True, text=True).stdout.split()
        if not mpirun:
            fail("no mpirun under the launcher")
        os.kill(int(mpirun[0]), signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    if p.returncode == 0 or "mpirun was killed by signal 9" not in err or \
            "--resume runs/killed" not in err:
        fail(f"a killed mpirun: exit {p.returncode}\n{err[-2000:]}")
    print(f"SIGINT: stopped at step {running['last_step']} with exit 3; "
          f"SIGTERM while paused: stopped at step {paused['last_step']} "
          f"with exit 3; SIGHUP: stopped at step {hung['last_step']} with "
          f"exit 3; a killed mpirun said so")


def ctl(sock, *words):
    p = subprocess.run([MOECTL, "ctl", sock] + list(words),
                       capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def wait_for(predicate, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    fail("timed out waiting for " + what)


def case_control(tmp):
    """Steering a 2-rank job through its control socket with moectl ctl."""
    import socket as sockets
    metrics = os.path.join(tmp, "c.jsonl")
    sock = os.path.join(tmp, "control.sock")
    os.chmod(tmp, 0o700)
    args = [MOECTL, "run", config(2), "--metrics", metrics, "--socket", sock,
            "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, "c"),
            "--set", "train.steps=1000000", "--set", "train.eval_every=0"]
    p = subprocess.Popen(args, cwd=tmp, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        def records():
            try:
                return [json.loads(l) for l in open(metrics)
                        if l.endswith("\n")]
            except OSError:
                return []
        def last_step():
            st = [r for r in records() if r["type"] == "step"]
            return st[-1] if st else None
        wait_for(lambda: (last_step() or {}).get("step", 0) >= 3, "steps")
        if os.stat(sock).st_mode & 0o777 != 0o600:
            fail(f"socket mode {oct(os.stat(sock).st_mode)}")

        rc, out, err = ctl(sock, "status")
        if rc != 0 or "running" not in out or "2 ranks" not in out:
            fail(f"status: {rc} {out!r} {err!r}")
        # Malformed and out-of-range commands change nothing.
        for words, needle in ((["move", "9.0", "1"], "layer 9 is out of range"),
                              (["move", "0.1", "5"], "rank 5 is out of range"),
                              (["lr", "fast"], "expected a number"),
                              (["paws"], "unknown command")):
            rc, out, err = ctl(sock, *words)
            if rc != 1 or needle not in err:
                fail(f"{words}: {rc} {out!r} {err!r}")

        # A client that connects, sends half a line and vanishes.
        c = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        c.connect(sock)
        c.sendall(b"move 0.")
        c.close()

        rc, out, _ = ctl(sock, "lr", "0.0001")
        if rc != 0:
            fail(f"lr: {rc} {out}")
        at = wait_for(lambda: next((r["step"] for r in records()
                                    if r["type"] == "event"
                                    and r["command"] == "lr 0.0001"), None),
                      "the lr event")
        wait_for(lambda: (last_step() or {}).get("step", 0) > at + 1, "steps")
        after = [r for r in records() if r["type"] == "step"
                 and r["step"] > at]
        if any(r["lr"] != 0.0001 for r in after):
            fail("lr 0.0001 did not take effect")

        before = last_step()["placement"][0][0]
        target = 1 - before
        rc, out, _ = ctl(sock, "move", "0.0", str(target))
        if rc != 0 or "placement version" not in out:
            fail(f"move: {rc} {out}")
        wait_for(lambda: last_step()["placement"][0][0] == target,
                 "the move in the placement")

        rc, out, _ = ctl(sock, "pause")
        if rc != 0:
            fail(f"pause: {rc} {out}")
        paused_at = last_step()["step"]
        # A paused job sleeps: rank 1 waits for rank 0's rounds asleep
        # (it used to spin in MPI, a whole core busy).
        follower = rank_pid(p.pid, 1)
        if follower is None:
            fail("rank 1's process not found")
        used = cpu_seconds(follower)
        time.sleep(2.0)
        used = cpu_seconds(follower) - used
        if used > 0.5:
            fail(f"rank 1 used {used:.2f} s of CPU in 2 s paused")
        if last_step()["step"] != paused_at:
            fail("training went on while paused")
        rc, out, _ = ctl(sock, "status")
        if "paused" not in out:
            fail(f"status while paused: {out}")
        rc, out, _ = ctl(sock, "resume")
        wait_for(lambda: last_step()["step"] > paused_at + 2, "resumed steps")

        rc, out, _ = ctl(sock, "stop")
        if rc != 0:
            fail(f"stop: {rc} {out}")
        _, err = p.communicate(timeout=60)
        if p.returncode != 3:
            fail(f"stop: exit {p.returncode}\n{err[-2000:]}")
        summary = records()[-1]
        if summary["type"] != "summary" or not summary["checkpoint"]:
            fail(f"after stop: {summary}")
        if os.path.exists(sock):
            fail("the socket was left behind")
        print(f"status, lr, move, pause/resume (rank 1 asleep: {used:.2f} "
              f"s of CPU in 2 s), stop over the socket; "
              f"stopped at step {summary['last_step']}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def main():
    if shutil.which("mpirun") is None:
        print("mpirun is not installed")
        sys.exit(77)
    with tempfile.TemporaryDirectory(prefix="moectl-mpi-") as tmp:
        globals()["case_" + CASE](tmp)
    print("ok", CASE)


if __name__ == "__main__":
    main()
