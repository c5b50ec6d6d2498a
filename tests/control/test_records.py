#!/usr/bin/env python3
"""Every record type the engine writes, checked against the one schema.

usage: test_records.py MOECTL CHECK_RECORDS SOURCE_ROOT

A 1-rank run of configs/tiny.yaml and a 2-rank run of tests/mpi/tiny2.yaml
(the second rank emulated 4x slower, so the planner has work) with
commands that make each record type: val, checkpoint, event (script and
policy), plan (plan, apply, the policy's turn), plan_result, spike (an
injected spike, MOECTL_TEST_SPIKE), summary. The
metrics files then go through check_records (the engine's own reader,
engine/protocol/record.c): every line decodes, has every declared field
of its type with the declared kind and no undeclared one, and every
declared type appears. The checker fails when a writer drops a field or
writes an undeclared type; a record with a field removed is fed to it to
show that it does. Without mpirun the 2-rank run is left out and plan
records are not required (exit 77 if the 1-rank run alone cannot cover
the types).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

MOECTL, CHECK, ROOT = (os.path.abspath(sys.argv[1]),
                       os.path.abspath(sys.argv[2]), sys.argv[3])
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
os.environ.pop("MALLOC_PERTURB_", None)
if "ASAN_OPTIONS" in os.environ:
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def train(tmp, name, config, extra, env=None):
    metrics = os.path.join(tmp, name + ".jsonl")
    args = [MOECTL, "run", config, "--headless", "--metrics", metrics,
            "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, name)] + extra
    p = subprocess.run(args, cwd=tmp, capture_output=True, text=True,
                       timeout=240, env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return metrics


def check(files, require_all=True):
    args = [CHECK] + (["--all"] if require_all else []) + files
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        one = train(tmp, "one", os.path.join(ROOT, "configs", "tiny.yaml"),
                    ["--steps", "6", "--set", "train.eval_every=3",
                     "--at", "2:lr 0.002", "--at", "2:status",
                     "--at", "3:checkpoint", "--at", "4:plan",
                     "--at", "4:policy suggest every 2",
                     "--set", "train.spike_guard.min_steps=2"],
                    # a spike at step 5 (the test hook): a spike record
                    env={"MOECTL_TEST_SPIKE": "5,1,30"})
        files = [one]
        if shutil.which("mpirun"):
            files.append(train(
                tmp, "two", os.path.join(ROOT, "tests", "mpi", "tiny2.yaml"),
                ["--steps", "14", "--set", "train.eval_every=5",
                 "--set", "moe.n_experts=16",
                 "--set", "cluster.devices.1.slowdown=4",
                 "--at", "3:plan", "--at", "4:apply",
                 "--at", "4:policy suggest every 4"]))
        p = check(files, require_all=len(files) == 2)
        print(p.stdout, end="")
        if p.returncode != 0:
            fail("records do not follow the schema")

        # The same reader rejects a record that lost a field, one that
        # gained an undeclared field, an undeclared type, a part that lost
        # a field, a kind that changed, and two run_ids in one run.
        records = [json.loads(line) for line in open(files[-1])]
        step = next(r for r in records if r["type"] == "step")
        event = next(r for r in records if r["type"] == "event")
        cases = {
            "missing": {k: v for k, v in step.items() if k != "tokens"},
            "extra": dict(event, **{"undeclared": 1}),
            "type": dict(event, **{"type": "events"}),
            "part": dict(step, **{"state": {k: v for k, v in
                                            step["state"].items()
                                            if k != "paused"}}),
            "kind": dict(step, **{"step": "12"}),
            "run_id": [step, dict(event, **{"run_id": "other-run"})],
        }
        for name, record in cases.items():
            path = os.path.join(tmp, name + ".jsonl")
            with open(path, "w") as f:
                for r in record if isinstance(record, list) else [record]:
                    f.write(json.dumps(r) + "\n")
            p = check([path], require_all=False)
            if p.returncode == 0:
                fail(f"check_records accepted a bad record ({name}): "
                     f"{p.stdout}")
            print(f"rejected ({name}): {p.stdout.strip()}")
        if not shutil.which("mpirun"):
            print("mpirun is not installed: plan records not covered")
            sys.exit(77)


main()
