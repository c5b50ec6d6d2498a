#!/usr/bin/env python3
"""Placement-side balancing on a live job (tests/mpi/tinyN.yaml with 16
experts of width 256 a layer, the last rank emulated 4x slower).

usage: test_balance.py CASE MOECTL SOURCE_ROOT

  policy_auto  on 2 ranks, `policy auto` from step 100 moves experts off
               the slow rank, so that the slow rank's share of the routed
               rows falls by 0.1 or more towards its share of the speed
               (a count, not a clock: tokens/s is printed, and judged by
               tests/bench/balance_bench.py), writes plan and plan_result
               records, and leaves the loss trajectory bit for bit equal
               to the run without the policy.
  commands     `plan` proposes without moving, `apply` moves and is
               measured afterwards, `policy suggest` proposes on schedule,
               and one rank refuses plan with a reason.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

CASE, MOECTL, ROOT = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
SANITIZED = "ASAN_OPTIONS" in os.environ
if SANITIZED:  # see test_mpi.py
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"
# meson's MALLOC_PERTURB_ fills every allocation, which costs MPI's
# per-call buffers so much that it drowns the expert work this test
# measures: the runs here go without it.
os.environ.pop("MALLOC_PERTURB_", None)
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
SLOW = ["--set", "moe.n_experts=16", "--set", "moe.expert_hidden=256",
        "--set", "train.eval_every=0", "--set", "checkpoint.every=0"]


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def train(tmp, name, ranks, extra):
    metrics = os.path.join(tmp, name + ".jsonl")
    args = [MOECTL, "run", os.path.join(ROOT, "tests", "mpi",
                                        f"tiny{ranks}.yaml"),
            "--headless", "--metrics", metrics,
            "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, name)] + extra
    p = subprocess.run(args, cwd=tmp, capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return [json.loads(line) for line in open(metrics)]


def of(records, kind):
    return [r for r in records if r["type"] == kind]


def slow(ranks):
    """The last rank, emulated 4x slower."""
    return ["--set", f"cluster.devices.{ranks - 1}.slowdown=4"]


def case_policy_auto(tmp):
    # Two ranks, one core each: on four ranks sharing two cores the fast
    # ranks compete for the cores the slow one leaves idle, which hides
    # much of what placement gains (tests/bench/balance_bench.py measures
    # both).
    steps, ranks = 400, 2
    auto = train(tmp, "auto", ranks, SLOW + slow(ranks) + [
        "--set", f"train.steps={steps}", "--at", "100:policy auto every 50 min-gain 0.02"])
    still = train(tmp, "still", ranks,
                  SLOW + slow(ranks) + ["--set", f"train.steps={steps}"])
    a, b = of(auto, "step"), of(still, "step")
    if len(a) != steps or len(b) != steps:
        fail(f"expected {steps} step records, got {len(a)} and {len(b)}")
    plans = of(auto, "plan")
    # Migration never changes the math: bit for bit, until a plan also
    # splits the batch anew; from then on the dense gradients are summed
    # over other rows, within the rank-count tolerance (1e-5 while every
    # token routes alike; once a token routes otherwise the two runs drift
    # apart as two seeds would, and 3e-2 bounds it over these steps).
    resplit = min((p["step"] for p in plans if p["applied"] and
                   p["rows"] != [q["rows"] for q in a[p["step"] - 1]["ranks"]]),
                  default=steps)
    flipped = False
    for x, y in zip(a, b):
        if x["step"] <= resplit:
            if (repr(x["loss"]), repr(x["grad_norm"]), x["expert_load"]) != \
               (repr(y["loss"]), repr(y["grad_norm"]), y["expert_load"]):
                fail(f"step {x['step']}: loss {x['loss']!r} with policy "
                     f"auto, {y['loss']!r} without")
            continue
        flipped |= x["expert_load"] != y["expert_load"]
        if abs(x["loss"] - y["loss"]) > (3e-2 if flipped else 1e-5) * \
                abs(y["loss"]):
            fail(f"step {x['step']} after the batch was split anew at "
                 f"{resplit}: loss {x['loss']!r}, {y['loss']!r} without")
    applied = [p for p in plans if p["applied"]]
    if not applied:
        fail(f"policy auto applied no plan: {plans}")
    results = of(auto, "plan_result")
    for p in plans:
        if p["trigger"] not in ("auto", "revert") or p["step"] % 50 != 0 \
                or p["step"] < 100:
            fail(f"unexpected plan record {p}")
        if p["trigger"] == "revert":
            # Auto moves back only from its plan that slowed the step.
            r = next((r for r in results if r["step"] == p["step"]), None)
            if r is None or r["verdict"] != "missed" or \
                    not r["measured_ms"] > r["before_ms"] + r["noise_ms"]:
                fail(f"moved back without a slower step: {p} after {r}")
        elif p["applied"] and p["predicted_gain"] < 0.02:
            fail(f"applied a plan below min-gain: {p}")
    first = applied[0]
    if not first["predicted_after_ms"] < first["predicted_before_ms"]:
        fail(f"the first applied plan predicts no gain: {first}")
    if not results or results[0]["applied_step"] != first["step"]:
        fail(f"no plan_result for the plan applied at step {first['step']}: "
             f"{results}")
    slow_before = a[99]["ranks"][ranks - 1]["experts"]
    slow_after = a[-1]["ranks"][ranks - 1]["experts"]
    if not slow_after < slow_before:
        fail(f"the slow rank still holds {slow_after} experts "
             f"(had {slow_before})")
    if a[-1]["placement_version"] <= a[99]["placement_version"]:
        fail("the placement version did not change")
    # Direction, counted rather than timed: the slow rank's share of the
    # work (the mean of its share of the batch's rows and of the routed
    # rows its experts process) falls from about a half towards its share
    # of the speed (1/5 at 4x slower), by rows, by experts or both: the
    # planner chooses. Wall-clock throughput shifts with whatever else the
    # machine runs (CI runs tests side by side), so it is printed for the
    # log and judged by tests/bench/, never asserted here.
    def slow_share(run):
        def share(key):
            return sum(s["ranks"][ranks - 1][key] /
                       sum(r[key] for r in s["ranks"]) for s in run) / len(run)
        return (share("rows") + share("tokens")) / 2
    before, after = slow_share(a[20:100]), slow_share(a[-100:])
    still_share = slow_share(b[-100:])
    def rate(run):
        return (statistics.median(s["tokens_per_s"] for s in run[20:100]),
                statistics.median(s["tokens_per_s"] for s in run[-100:]))
    (b0, a0), (b1, a1) = rate(a), rate(b)
    print(f"policy auto: slow rank's share of the work {before:.3f} -> "
          f"{after:.3f} (without the policy {still_share:.3f}); slow rank "
          f"rows {a[99]['ranks'][ranks - 1]['rows']:.0f} -> "
          f"{a[-1]['ranks'][ranks - 1]['rows']:.0f}, experts "
          f"{slow_before:.0f} -> {slow_after:.0f}; {len(applied)} "
          f"plan(s) applied; tokens/s {b0:,.0f} -> {a0:,.0f}, without "
          f"{b1:,.0f} -> {a1:,.0f} (not judged)")
    # A real shift, not one expert's or one row's worth: at least 0.1 of
    # the work, from about 0.49 towards 0.2.
    if not after <= before - 0.1 or not after < still_share:
        fail(f"the slow rank's share of the work did not fall by 0.1: "
             f"{before:.3f} -> {after:.3f}, {still_share:.3f} without the "
             f"policy")
    for s in a[-100:]:
        if s["straggler"] is None or s["ideal_tokens_per_s"] is None:
            fail(f"step {s['step']}: straggler or ideal missing")


def case_commands(tmp):
    run = train(tmp, "cmds", 4, SLOW + slow(4) + [
        "--steps", "160", "--at", "40:plan", "--at", "60:apply",
        "--at", "100:policy suggest every 20 min-gain 0"])
    plans = of(run, "plan")
    by = {}
    for p in plans:
        by.setdefault(p["trigger"], []).append(p)
    if [p["step"] for p in by.get("plan", [])] != [40] or by["plan"][0]["applied"]:
        fail(f"plan at step 40 should propose without moving: {plans}")
    if [p["step"] for p in by.get("apply", [])] != [60] or not by["apply"][0]["applied"]:
        fail(f"apply at step 60 should move: {plans}")
    # min-gain 0: every plan that changes anything is posted (a policy
    # suggestion below min_gain is not).
    suggested = [p["step"] for p in by.get("suggest", [])]
    if not suggested or not set(suggested) <= {100, 120, 140, 160} or \
            any(p["predicted_gain"] < 0 or p["changes"] == 0
                for p in by["suggest"]):
        fail(f"policy suggest every 20 from step 100 planned at {suggested}")
    if any(p["applied"] for p in by["suggest"]):
        fail("policy suggest moved experts")
    steps = {s["step"]: s for s in of(run, "step")}
    if steps[41]["placement"] != steps[40]["placement"]:
        fail("plan moved experts")
    moves, splits = by["apply"][0]["moves"], by["apply"][0]["splits"]
    if not moves and not splits:
        fail("apply found nothing to move or split on a 4x slower rank")
    for layer, expert, shares in splits:
        now = [[l, e, [[r, round(f, 6)] for r, f in sh]]
               for l, e, sh in steps[61]["splits"]]
        if [layer, expert, [[r, round(f, 6)] for r, f in shares]] not in now:
            fail(f"split {layer}.{expert} {shares} is not what happened: "
                 f"{steps[61]['splits']}")
    for layer, expert, src, dst in moves:
        if steps[60]["placement"][layer][expert] != src or \
           steps[61]["placement"][layer][expert] != dst:
            fail(f"move {layer}.{expert} {src}->{dst} is not what happened")
    if steps[160]["placement"] != steps[61]["placement"]:
        fail("policy suggest changed the placement")
    events = {e["step"]: e for e in of(run, "event")}
    if "move" not in events[60].get("reply", "") and \
       "->" not in events[60].get("reply", ""):
        fail(f"apply's reply does not describe the moves: {events[60]}")
    if not of(run, "plan_result"):
        fail("no plan_result after apply")

    one = train(tmp, "one", 1, ["--steps", "3", "--at", "1:plan"])
    reply = of(one, "event")[0].get("reply", "")
    if "nothing to place" not in reply:
        fail(f"plan on one rank replied {reply!r}")


def main():
    if subprocess.run(["which", "mpirun"], capture_output=True).returncode:
        print("mpirun not found: skipped")
        sys.exit(77)
    if not os.path.exists(CORPUS):
        fail(f"{CORPUS} is missing: run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="moectl-balance-") as tmp:
        {"policy_auto": case_policy_auto, "commands": case_commands}[CASE](tmp)
    print("ok")


if __name__ == "__main__":
    main()
