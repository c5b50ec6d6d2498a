#!/usr/bin/env python3
"""The loss-spike guard (train.spike_guard), with spikes injected by the
test hook MOECTL_TEST_SPIKE=STEP,COUNT,SCALE (the cross-entropy and its
gradient of COUNT steps from STEP multiplied by SCALE, once per process).

  skip      one spike: the step is not applied (skipped, a spike record
            with its reason, the batch requeued 100 steps on and trained
            then); the loss after it follows the run without the spike;
            with the guard off (window 0) the same spike is applied
  lower     three spikes: three skips, then the learning rate halved
            through step 62 + 200 (the step records' lr against the
            unspiked run's)
  rollback  five in a row: a roll back to the newest checkpoint (step 60),
            steps 61.. trained again with another data order, the final
            validation loss within 2% of the unspiked run's; with no
            checkpoint to roll back to, exit 1 with the reason
  resume    the guard's state is in the checkpoint: a run resumed after
            the spike trains the requeued batch at its step, bit for bit
            as the run that went on
  script    `when spikes > 0 stop` stops the run at the spike (exit 3)
  ranks     two ranks judge alike: the spike is skipped on both and the
            losses follow the one-rank run's (skipped without mpirun)

usage: test_spike.py CASE MOECTL SOURCE_ROOT
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

CASE, MOECTL = sys.argv[1], os.path.abspath(sys.argv[2])
ROOT = os.path.abspath(sys.argv[3])
CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
STEPS = 170
if "ASAN_OPTIONS" in os.environ:
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def run(tmp, name, spike=None, extra=(), steps=STEPS, expect=0,
        config=CONFIG, ranks=1):
    """Trains; returns (records, stderr)."""
    metrics = os.path.join(tmp, name + ".jsonl")
    env = dict(os.environ)
    env.pop("MOECTL_TEST_SPIKE", None)
    if spike:
        env["MOECTL_TEST_SPIKE"] = spike
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    args = [MOECTL, "run", config, "--headless", "--steps", str(steps),
            "--metrics", metrics, "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, name),
            "--set", f"train.eval_every={STEPS}",
            "--set", f"train.steps={STEPS}"] + list(extra)
    p = subprocess.run(args, cwd=tmp, env=env, capture_output=True,
                       text=True, timeout=240)
    if p.returncode != expect:
        fail(f"{name}: exit {p.returncode}, expected {expect}:\n"
             f"{p.stderr[-3000:]}")
    records = [json.loads(line) for line in open(metrics)]
    return records, p.stderr


def of(records, kind):
    return [r for r in records if r["type"] == kind]


def steps(records):
    """step -> the last step record of that number."""
    return {r["step"]: r for r in of(records, "step")}


def val_loss(records):
    return of(records, "summary")[0]["val_loss"]


def close(a, b, rel, what):
    if abs(a - b) > rel * abs(b):
        fail(f"{what}: {a:.5f} against {b:.5f} (more than {rel:.0%} apart)")
    print(f"{what}: {a:.5f} against {b:.5f}")


def case_skip(tmp):
    clean, _ = run(tmp, "clean")
    spiked, err = run(tmp, "spiked", "60,1,30")
    skips = of(spiked, "spike")
    if [s["action"] for s in skips] != ["skip"] or skips[0]["step"] != 60:
        fail(f"expected one skip at step 60: {skips}")
    s = skips[0]
    if s["requeued_to"] != 160 or "loss" not in s["reason"]:
        fail(f"skip record: {s}")
    by_step = steps(spiked)
    if not by_step[60]["skipped"] or by_step[61]["skipped"]:
        fail("step 60 should be skipped, 61 applied")
    if by_step[60]["loss"] < 10 * steps(clean)[60]["loss"]:
        fail("the hook did not make a spike")
    if by_step[STEPS]["spikes"] != 1 or of(spiked, "summary")[0]["spikes"] != 1:
        fail("spike counts")
    if "spike guard: skipped (loss" not in err:
        fail(f"stderr does not tell the skip:\n{err}")
    # Up to step 59 the runs are the same; the spiked run trains step 59's
    # model on step 61's batch where the clean one trained step 60's.
    if by_step[59]["loss"] != steps(clean)[59]["loss"]:
        fail("the runs differ before the spike")
    close(val_loss(spiked), val_loss(clean), 0.02, "val_loss after a skip")
    off, _ = run(tmp, "off", "60,1,30", ["--set", "train.spike_guard.window=0"])
    if of(off, "spike") or steps(off)[60]["skipped"]:
        fail("with the guard off the spike must be applied")
    print("a spike was skipped, its batch trained at step 160, and the run "
          "follows the unspiked one")


def case_lower(tmp):
    clean, _ = run(tmp, "clean")
    spiked, _ = run(tmp, "spiked", "60,3,30")
    actions = [(s["step"], s["action"]) for s in of(spiked, "spike")]
    if actions != [(60, "skip"), (61, "skip"), (62, "skip"),
                   (62, "lower_lr")]:
        fail(f"actions: {actions}")
    lower = of(spiked, "spike")[-1]
    if lower["until_step"] != 262 or lower["lr_factor"] != 0.5:
        fail(f"lower_lr record: {lower}")
    a, b = steps(spiked), steps(clean)
    for step in (63, 100, STEPS):
        if abs(a[step]["lr"] / b[step]["lr"] - 0.5) > 1e-9:
            fail(f"lr at step {step}: {a[step]['lr']} against "
                 f"{b[step]['lr']}")
    if abs(a[59]["lr"] / b[59]["lr"] - 1) > 1e-12:
        fail("lr lowered before the spikes")
    print("three spikes lowered the learning rate by half for 200 steps")


def case_rollback(tmp):
    clean, _ = run(tmp, "clean")
    every = ["--set", "checkpoint.every=20",
             "--set", "train.spike_guard.lower_after=0"]
    spiked, err = run(tmp, "spiked", "60,5,30", every)
    back = [s for s in of(spiked, "spike") if s["action"] == "rollback"]
    if len(back) != 1 or back[0]["step"] != 64 or \
            back[0]["resumed_step"] != 60 or \
            not back[0]["checkpoint"].endswith("step-00000060"):
        fail(f"rollback records: {back}")
    order = [r["step"] for r in of(spiked, "step")]
    if order[:64] != list(range(1, 65)) or order[64] != 61 or \
            order[-1] != STEPS:
        fail(f"steps after the roll back: {order[58:70]}")
    if "rolled back to" not in err:
        fail(f"stderr does not tell the roll back:\n{err}")
    # Steps 61.. again, with another data order than the clean run's.
    replayed = [r for r in of(spiked, "step") if r["step"] == 61][-1]
    if replayed["loss"] == steps(clean)[61]["loss"]:
        fail("the data order after the roll back is the same")
    close(val_loss(spiked), val_loss(clean), 0.02,
          "val_loss after a roll back")
    _, err = run(tmp, "nowhere", "60,5,30", expect=1)
    if "no checkpoint" not in err or "roll back" not in err:
        fail(f"no checkpoint: {err[-500:]}")
    print("five spikes in a row rolled back to step 60 and the run recovered")


def case_resume(tmp):
    through, _ = run(tmp, "through", "60,1,30")
    first, _ = run(tmp, "first", "60,1,30", steps=100)
    ckpt = of(first, "checkpoint")[-1]["path"]
    manifest = json.load(open(os.path.join(ckpt, "manifest.json")))
    queue = manifest["spike_guard"]["queue"]
    if len(queue) != 1 or queue[0][0] != 160:
        fail(f"the checkpoint's guard queue: {manifest['spike_guard']}")
    second, _ = run(tmp, "second", None, ["--resume", ckpt])
    a, b = steps(through), steps(second)
    for step in range(101, STEPS + 1):
        if a[step]["loss"] != b[step]["loss"]:
            fail(f"step {step}: {b[step]['loss']!r} resumed against "
                 f"{a[step]['loss']!r}")
    print("the guard's medians and queue resume bit for bit (steps 101-170)")


def case_script(tmp):
    script = os.path.join(tmp, "stop.script")
    with open(script, "w") as f:
        f.write("when spikes > 0 stop\n")
    spiked, _ = run(tmp, "spiked", "60,1,30", ["--script", script],
                    expect=3)
    summary = of(spiked, "summary")[0]
    if summary["status"] != "stopped" or summary["last_step"] != 60:
        fail(f"summary: {summary}")
    print("`when spikes > 0 stop` stopped the run at the spike")


def case_ranks(tmp):
    if not shutil.which("mpirun"):
        print("mpirun is not installed")
        sys.exit(77)
    mpi = os.path.join(ROOT, "tests", "mpi")
    one, _ = run(tmp, "one", "60,1,30", config=os.path.join(mpi, "tiny1.yaml"))
    both, _ = run(tmp, "both", "60,1,30", config=os.path.join(mpi, "tiny2.yaml"))
    for records, name in ((one, "1 rank"), (both, "2 ranks")):
        if [(s["step"], s["action"]) for s in of(records, "spike")] != \
                [(60, "skip")]:
            fail(f"{name}: {of(records, 'spike')}")
    # tests/mpi's stated tolerance: 1e-5 relative while every token is
    # routed alike, 1e-2 once a near tie flips a routing.
    a, b = steps(one), steps(both)
    early = max(abs(a[s]["loss"] / b[s]["loss"] - 1) for s in range(1, 31))
    late = max(abs(a[s]["loss"] / b[s]["loss"] - 1) for s in a)
    if early > 1e-5 or late > 1e-2:
        fail(f"2 ranks differ from 1 by {early:.1e} (steps 1-30), "
             f"{late:.1e} (all)")
    print(f"2 ranks skipped the same step; losses within {early:.1e} "
          f"(steps 1-30), {late:.1e} (all)")


def main():
    cases = {"skip": case_skip, "lower": case_lower,
             "rollback": case_rollback, "resume": case_resume,
             "script": case_script, "ranks": case_ranks}
    with tempfile.TemporaryDirectory() as tmp:
        cases[CASE](tmp)


main()
