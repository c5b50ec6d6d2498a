#!/usr/bin/env python3
"""Headless scripts (`moectl run CONFIG --headless --script OPS`), exit
statuses and signals, on configs/tiny.yaml (one rank) and
tests/mpi/tiny2.yaml (two).

usage: test_script.py CASE MOECTL SOURCE_ROOT

  kinds     STEP, every N and when lines fire at their boundaries, in script
            order, with their replies in the metrics; `stop` ends the run
            with exit 3 after a checkpoint that resumes; the summary record
            and the stderr table agree
  ranks     the same script on two ranks: plan/apply/policy lines
  bad       malformed scripts are refused before anything starts, with
            `file:line: message` and exit 2
  status    exit statuses: 0 done, 1 runtime failure, 2 bad input, 3 stop
  signal    SIGTERM: checkpoint, exit 3; a second signal exits at once and
            leaves no half-written checkpoint
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

CASE, MOECTL, ROOT = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
if "ASAN_OPTIONS" in os.environ:  # see tests/mpi/test_mpi.py
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"
os.environ.pop("MALLOC_PERTURB_", None)
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
TINY2 = os.path.join(ROOT, "tests", "mpi", "tiny2.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def run(tmp, name, script, config=TINY, extra=(), sets=()):
    """Runs a script; returns (exit status, records, stderr)."""
    ops = os.path.join(tmp, name + ".ops")
    with open(ops, "w") as f:
        f.write(script)
    metrics = os.path.join(tmp, name + ".jsonl")
    args = [MOECTL, "run", config, "--headless", "--script", ops,
            "--metrics", metrics, "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, name)]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(args + list(extra), cwd=tmp, capture_output=True,
                       text=True, timeout=600)
    records = ([json.loads(line) for line in open(metrics)]
               if os.path.exists(metrics) else None)
    return p.returncode, records, p.stderr


def of(records, kind):
    return [r for r in records if r["type"] == kind]


def case_kinds(tmp):
    script = """# every kind of line
0 lr 0.005            # before the first step
every 40 checkpoint
30 status
when step >= 50 status
when loss < 100 status   # true from the first step: fires once
when max_mean > 1e9 stop # never
90 move 0.1 0
130 stop
"""
    rc, records, err = run(tmp, "kinds", script, sets=["train.eval_every=0"])
    if rc != 3:
        fail(f"a script ending in stop exited {rc}, want 3:\n{err}")
    events = [(e["step"], e["command"]) for e in of(records, "event")]
    want = [(0, "lr 0.005"), (1, "status"), (30, "status"),
            (40, "checkpoint"), (50, "status"), (80, "checkpoint"),
            (90, "move 0.1 0"), (120, "checkpoint"), (130, "stop")]
    if events != want:
        fail(f"events {events},\nwant   {want}")
    for e in of(records, "event"):
        if not e.get("reply"):
            fail(f"event without a reply: {e}")
        # The facts are fields: who gave it, whether it applied, and the
        # job's state after it (record.h).
        if e.get("origin") != "script" or e.get("ok") is not True:
            fail(f"event origin/ok: {e}")
        state = e.get("state", {})
        if state.get("step") != e["step"] or state.get("paused") is not \
                False or state.get("policy") != "off" or \
                state.get("last_step") != 200:  # train.steps
            fail(f"event state: {e}")
    lr_event = of(records, "event")[0]
    if lr_event["state"]["lr"] != 0.005:
        fail(f"the state after lr 0.005: {lr_event}")
    steps = {s["step"]: s for s in of(records, "step")}
    if steps[1]["lr"] != 0.005:  # lr VALUE holds from then on
        fail(f"lr at step 1 is {steps[1]['lr']}, want 0.005")
    if max(steps) != 130:
        fail(f"trained to step {max(steps)}, want 130")
    summary = of(records, "summary")
    if len(summary) != 1 or summary[0]["status"] != "stopped" or \
       summary[0]["last_step"] != 130:
        fail(f"summary {summary}")
    s = summary[0]
    for key in ("loss", "val_loss", "tokens_per_s", "cost_per_mtok",
                "migrations", "phases_s", "mfu"):
        if key not in s:
            fail(f"the summary record lacks {key}: {s}")
    if s["migrations"] != 0:  # one rank: move 0.1 0 keeps it where it is
        fail(f"migrations {s['migrations']} on one rank")
    price = 0.05
    if abs(s["cost_per_mtok"] - price / 3600 / s["tokens_per_s"] * 1e6) > \
       1e-9 * s["cost_per_mtok"]:
        fail(f"cost per 1M {s['cost_per_mtok']} at {s['tokens_per_s']} tok/s")
    for phase in ("train", "validation", "checkpoints", "commands"):
        if not s["phases_s"][phase] >= 0:
            fail(f"phase {phase}: {s['phases_s']}")
    if "  status      stopped at step 130 (exit 3)" not in err or \
       "migrations  0 experts" not in err:
        fail(f"the stderr summary table:\n{err}")
    ckpt = s["checkpoint"]
    if not ckpt or not ckpt.endswith("step-00000130"):
        fail(f"checkpoint {ckpt}")
    rc, resumed, err = run(tmp, "after", "", extra=["--resume", ckpt,
                                                    "--steps", "133"],
                           sets=["train.eval_every=0"])
    if rc != 0 or sorted(x["step"] for x in of(resumed, "step")) != \
       [131, 132, 133]:
        fail(f"resume after the scripted stop: exit {rc}\n{err}")
    print("STEP, every and when lines fired as scheduled; stop gave exit 3 "
          "and a checkpoint that resumes")


def case_ranks(tmp):
    script = """0 policy suggest every 25
40 apply
when step == 60 plan
70 stop
"""
    rc, records, err = run(tmp, "ranks", script, config=TINY2,
                           sets=["train.eval_every=0",
                                 "cluster.devices.1.slowdown=3"])
    if rc != 3:
        fail(f"exit {rc}, want 3:\n{err}")
    if "Primary job" in err:
        fail(f"a clean stop made mpirun complain:\n{err}")
    plans = [(p["step"], p["trigger"], p["applied"]) for p in of(records, "plan")]
    # Suggestions come at multiples of 25, only at or above min_gain.
    if (40, "apply", True) not in plans or (60, "plan", False) not in plans \
            or any(t == "suggest" and (s % 25 or applied)
                   for s, t, applied in plans):
        fail(f"plans {plans}")
    # The policy posts a suggestion only at or above min_gain (0.05).
    low = [(p["step"], p["predicted_gain"]) for p in of(records, "plan")
           if p["trigger"] == "suggest" and not p["predicted_gain"] >= 0.05]
    if low:
        fail(f"suggestions below min_gain were posted: {low}")
    s = of(records, "summary")[0]
    # An applied change ships an expert unless its new rank already held
    # a replica of it.
    moved = sum(p["changes"] for p in of(records, "plan") if p["applied"])
    if not 0 < s["migrations"] <= moved:
        fail(f"summary migrations {s['migrations']}, plans changed {moved}")
    print(f"two ranks: {plans}; {moved} migrations")


BAD = [
    ("x lr 0.1\n", "1: expected STEP COMMAND, every N COMMAND or when METRIC "
                   "OP VALUE COMMAND, got \"x\""),
    ("# fine\n\n10 lr\n", "3: lr: missing VALUE (usage: lr VALUE)"),
    ("10\n", "1: missing the command to run"),
    ("10 pause\n", "1: pause cannot be scripted: a paused job waits for a "
                   "resume that only a client of the control socket can send"),
    ("999999 stop\n", "1: step 999999 is past the run's last step 200"),
    ("every 0 stop\n", "1: every: expected a step count N >= 1, got \"0\" "
                       "(usage: every N COMMAND)"),
    ("when losss > 2 stop\n", "1: when: unknown metric \"losss\" (metrics: "
                              "step, loss, val_loss, lr, grad_norm, "
                              "tokens_per_s, step_ms, mfu, cost_per_mtok, "
                              "max_mean, cv, dead, ideal_share, dropped, spikes)"),
    ("when loss => 2 stop\n", "1: when: expected a comparison (< <= > >= == "
                              "!=), got \"=>\" (usage: when METRIC OP VALUE "
                              "COMMAND)"),
    ("when loss < two stop\n", "1: when: expected a number, got \"two\""),
    ("when loss < 2\n", "1: missing the command to run"),
    ("5 move 9.0 0\n", "1: move: layer 9 is out of range (0..1)"),
    ("5 fly\n", "1: unknown command \"fly\" (commands: pause, resume, stop, "
                "checkpoint, status, lr VALUE, move L.E R, plan, apply, "
                "policy off|suggest|auto [every N] [min-gain X], "
                "split L.E R[:W] ..., shares W0 W1 ...)"),
    ("5 stop\n7 policy sometimes\n", "2: policy: expected off, suggest or "
                                     "auto, got \"sometimes\""),
]


def case_bad(tmp):
    for i, (text, want) in enumerate(BAD):
        rc, records, err = run(tmp, f"bad{i}", text)
        path = os.path.join(tmp, f"bad{i}.ops")
        line = f"moectl: {path}:{want}"
        if rc != 2 or err.strip() != line:
            fail(f"script {text!r}: exit {rc}\n got {err.strip()!r}\n"
                 f"want {line!r}")
        if records is not None:
            fail(f"script {text!r}: a metrics file was written")
    # On two ranks the script is refused before mpirun starts.
    rc, _, err = run(tmp, "bad2r", "x\n", config=TINY2)
    if rc != 2 or err.count("expected STEP COMMAND") != 1 or "mpirun" in err \
       or "MPI" in err:
        fail(f"two ranks, bad script: exit {rc}\n{err}")
    rc, _, err = run(tmp, "missing", "", extra=["--script", "/nonexistent/x"])
    if rc != 2 or "/nonexistent/x: no such file" not in err:
        fail(f"a missing script: exit {rc}\n{err}")
    print(f"{len(BAD) + 2} bad scripts refused with file:line: message")


def case_status(tmp):
    rc, _, err = run(tmp, "done", "", sets=["train.steps=20",
                                            "train.warmup_steps=2"])
    if rc != 0:
        fail(f"a finished run exited {rc}\n{err}")
    rc, _, err = run(tmp, "fails", "", sets=["data.path=" +
                                             os.path.join(tmp, "no-such")])
    if rc != 2 or "no-such" not in err:
        fail(f"a missing corpus: exit {rc}, want 2 (refused before work)"
             f"\n{err}")
    rc, _, err = run(tmp, "badcfg", "", sets=["model.d_model=abc"])
    if rc != 2:
        fail(f"a bad configuration: exit {rc}, want 2\n{err}")
    rc, _, err = run(tmp, "stops", "3 stop\n")
    if rc != 3:
        fail(f"a scripted stop: exit {rc}, want 3\n{err}")
    # No command is dropped: 10,000 due at one boundary all run, in order,
    # and the stop after them stops the job there.
    many = "1 status\n" * 10000 + "every 1 lr 0.002\n1 stop\n"
    rc, records, err = run(tmp, "many", many)
    events = of(records or [], "event")
    if rc != 3 or [e["command"] for e in events] != \
            ["status"] * 10000 + ["lr 0.002", "stop"] or \
            of(records, "summary")[0]["last_step"] != 1:
        fail(f"10,000 commands at step 1: exit {rc}, {len(events)} events"
             f"\n{err[-2000:]}")
    print("exit statuses 0, 2 and 3; 10,002 commands at one boundary, none "
          "dropped")


def case_signal(tmp):
    metrics = os.path.join(tmp, "sig.jsonl")
    ckpt = os.path.join(tmp, "sig")
    args = [MOECTL, "run", TINY, "--headless", "--metrics", metrics,
            "--set", "data.path=" + CORPUS, "--set", "checkpoint.dir=" + ckpt,
            "--set", "train.steps=100000", "--set", "train.eval_every=0",
            "--set", "model.d_model=256", "--set", "moe.expert_hidden=1024"]
    p = subprocess.Popen(args, cwd=tmp, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.exists(metrics) and open(metrics).read().count('"step"') > 2:
            break
        time.sleep(0.05)
    # Two signals at once: the second leaves at once, whatever the first
    # was doing (a checkpoint, most likely).
    p.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    if p.returncode not in (3, 128 + signal.SIGTERM):
        fail(f"two SIGTERMs: exit {p.returncode}\n{err}")
    names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
    # A write cut short leaves a step directory without its manifest (no
    # checkpoint: the manifest is renamed into place last); one with a
    # manifest must be whole and resume.
    whole = []
    for n in names:
        path = os.path.join(ckpt, n)
        if not n.startswith("step-") or not os.path.isdir(path):
            if not n.startswith(".") and ".tmp" not in n:
                fail(f"unexpected file in the checkpoint directory: {n}")
        elif os.path.exists(os.path.join(path, "manifest.json")):
            whole.append(n)
    for n in whole:
        rc = subprocess.run([MOECTL, "run", TINY, "--headless", "--resume",
                             os.path.join(ckpt, n), "--steps",
                             str(int(n[5:13]) + 1), "--set",
                             "data.path=" + CORPUS, "--set",
                             "checkpoint.dir=" + os.path.join(tmp, "r"),
                             "--set", "train.steps=100000", "--set",
                             "model.d_model=256", "--set",
                             "moe.expert_hidden=1024"],
                            cwd=tmp, capture_output=True, text=True,
                            timeout=300)
        if rc.returncode != 0:
            fail(f"{n} after two signals does not resume:\n{rc.stderr}")
    # One SIGTERM: checkpoint, exit 3.
    os.remove(metrics)
    p = subprocess.Popen(args, cwd=tmp, stderr=subprocess.PIPE, text=True)
    while time.time() < deadline + 120:
        if os.path.exists(metrics) and open(metrics).read().count('"step"') > 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    if p.returncode != 3:
        fail(f"SIGTERM: exit {p.returncode}, want 3\n{err}")
    last = [json.loads(line) for line in open(metrics)][-1]
    if last["type"] != "summary" or not last["checkpoint"]:
        fail(f"after SIGTERM the last record is {last}")
    print(f"second signal: exit {p.returncode}; one SIGTERM: exit 3 with "
          f"{os.path.basename(last['checkpoint'])}")


def main():
    if not os.path.exists(CORPUS):
        fail(f"{CORPUS} is missing: run scripts/setup.sh")
    if CASE == "ranks" and subprocess.run(["which", "mpirun"],
                                          capture_output=True).returncode:
        print("mpirun not found: skipped")
        sys.exit(77)
    with tempfile.TemporaryDirectory(prefix="moectl-script-") as tmp:
        globals()["case_" + CASE](tmp)
    print("ok", CASE)


if __name__ == "__main__":
    main()
