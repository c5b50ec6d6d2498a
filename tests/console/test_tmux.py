#!/usr/bin/env python3
"""The console as a person uses it: tmux runs moectl on a terminal,
send-keys types, capture-pane reads the screen. A 2-rank tiny job.

usage: test_tmux.py MOECTL SOURCE_ROOT
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MOECTL, ROOT = os.path.abspath(sys.argv[1]), sys.argv[2]
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
CONFIG = os.path.join(ROOT, "tests", "mpi", "tiny2.yaml")
SESSION = f"moectl-test-{os.getpid()}"
if "ASAN_OPTIONS" in os.environ:  # the job runs under mpirun: see test_mpi.py
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"


def fail(msg):
    print("FAIL:", msg)
    print(screen())
    sys.exit(1)


def tmux(*args, check=True):
    p = subprocess.run(["tmux", "-L", SESSION] + list(args),
                       capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"tmux {args}: {p.stderr}")
    return p.stdout


def screen():
    return tmux("capture-pane", "-p", "-t", SESSION, check=False)


def keys(*k):
    tmux("send-keys", "-t", SESSION, *k)
    time.sleep(0.3)


def wait_for(predicate, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    fail("timed out waiting for " + what)


def main():
    if shutil.which("tmux") is None or shutil.which("mpirun") is None:
        print("tmux or mpirun is not installed")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="moectl-console-test-")
    metrics = os.path.join(tmp, "m.jsonl")
    command = (f"cd {tmp} && TERM=xterm-256color {MOECTL} run {CONFIG} "
               f"--metrics {metrics} --set data.path={CORPUS} "
               f"--set checkpoint.dir={tmp}/ckpt --set train.steps=1000000 "
               f"--set train.eval_every=20 --set checkpoint.every=0; "
               f"echo CONSOLE-EXIT $?; sleep 60")
    tmux("new-session", "-d", "-s", SESSION, "-x", "120", "-y", "40",
         "bash", "-c", command)
    job = None
    try:
        job = run_checks(metrics)
    finally:
        tmux("kill-server", check=False)
        if job:
            subprocess.run([MOECTL, "ctl", job, "stop"], capture_output=True)
        time.sleep(0.5)
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok console")


def records(metrics):
    try:
        return [json.loads(l) for l in open(metrics) if l.endswith("\n")]
    except OSError:
        return []


def last_step(metrics):
    steps = [r for r in records(metrics) if r["type"] == "step"]
    return steps[-1] if steps else None


def run_checks(metrics):
    wait_for(lambda: "Expert load" in screen() and last_step(metrics),
             "the console to draw a running job")
    wait_for(lambda: re.search(r"step (\d+)/1000000", screen()) and
             re.search(r"Loss \d+\.\d{4}", screen()), "the header and loss")
    s = screen()
    # Numbers on screen match the metrics file (written before the console
    # hears of a record).
    m = re.search(r"Loss (\d+\.\d{4})", s)
    losses = {f"{r['loss']:.4f}" for r in records(metrics)
              if r["type"] == "step"}
    if m.group(1) not in losses:
        fail(f"loss {m.group(1)} on screen is in no step record")
    step_on_screen = int(re.search(r"step (\d+)/1000000", s).group(1))
    if not any(r["type"] == "step" and r["step"] == step_on_screen
               for r in records(metrics)):
        fail(f"step {step_on_screen} on screen is in no step record")
    if not re.search(r"tokens/s \d+ now", s):
        fail("no tokens/s on screen")
    if "per 1M tokens" not in s or "USD" not in s:
        fail("no cost on screen")
    if not re.search(r"^L0 ", s, re.M) or not re.search(r"^L1 ", s, re.M):
        fail("no heatmap rows")
    if "cpu1" not in s:
        fail("no device rows")

    # Move expert 0.0 with keys: m, then Enter, to the next rank.
    before = last_step(metrics)["placement"][0][0]
    keys("m")
    if "move expert 0.0 to rank" not in screen():
        fail("m did not open the move prompt")
    keys("Enter")
    wait_for(lambda: last_step(metrics)["placement"][0][0] != before,
             "the move in the metrics placement")

    # :lr 1e-4 through the command line.
    keys(":")
    keys("lr 1e-4", "Enter")
    wait_for(lambda: last_step(metrics)["lr"] == 1e-4,
             "lr 1e-4 in the metrics")

    # A resize redraws: the footer follows the last line.
    tmux("resize-window", "-t", SESSION, "-x", "100", "-y", "30")
    time.sleep(0.8)
    lines = screen().rstrip("\n").split("\n")
    if len(lines) != 30 or "? help" not in lines[-1]:
        fail(f"after resize: {len(lines)} lines, last {lines[-1]!r}")

    # The ? overlay lists the keys.
    keys("?")
    if "pause / resume" not in screen():
        fail("? shows no help")
    keys("Escape")

    # Detach: the job goes on, and the console says how to attach.
    keys("q")
    keys("d")
    out = wait_for(lambda: "CONSOLE-EXIT" in screen() and screen(),
                   "the console to leave")
    m = re.search(r"moectl attach (\S+)", out)
    if not m or "CONSOLE-EXIT 0" not in out:
        fail("detach did not print how to attach")
    socket_path = m.group(1)
    # The terminal is restored: no alternate screen.
    if tmux("display", "-p", "-t", SESSION, "#{alternate_on}").strip() != "0":
        fail("the terminal was left in the alternate screen")
    step = last_step(metrics)["step"]
    wait_for(lambda: last_step(metrics)["step"] > step + 5,
             "the job to go on after detach")

    # Reattach in a new window, then stop the job from the console.
    tmux("new-window", "-t", SESSION,
         f"TERM=xterm-256color {MOECTL} attach {socket_path}; "
         f"echo ATTACH-EXIT $?; sleep 60")
    wait_for(lambda: re.search(r"step \d+/1000000", screen()),
             "the attached console to show the job")
    keys("s")
    keys("y")
    wait_for(lambda: "ATTACH-EXIT" in screen(), "the job to stop", 60)
    if "ATTACH-EXIT 3" not in screen():
        fail("stopping from the console should end with status 3")
    summary = records(metrics)[-1]
    if summary["type"] != "summary" or summary["status"] != "stopped":
        fail(f"the job did not stop cleanly: {summary}")
    return None


if __name__ == "__main__":
    main()
