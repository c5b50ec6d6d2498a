#!/usr/bin/env python3
"""The hung-rank watchdog: SIGSTOP of one rank of a 2-rank job.

A 2-rank job (tests/mpi/tiny2.yaml) with train.collective_timeout 5 s
checkpoints every 20 steps; once a checkpoint is written, rank RANK is
stopped with SIGSTOP. The job must end by itself, exit 1, name that rank
as the one that does not answer and say how to resume; no process of the
job may be left (the stopped rank included); and the checkpoint it names
must resume.

usage: test_hang.py RANK MOECTL SOURCE_ROOT
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

RANK, MOECTL = int(sys.argv[1]), os.path.abspath(sys.argv[2])
ROOT = os.path.abspath(sys.argv[3])
CONFIG = os.path.join(ROOT, "tests", "mpi", "tiny2.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
DEADLINE = 5
# The deadline, the watchdog's 3 s for answers, its ticks, mpirun's
# teardown: the job ends well within this, or it does not end at all.
ENDS_WITHIN = 60


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def ranks_of(tag):
    """pid -> rank of the job's processes (their environment names the
    rank; their command line the test's own metrics file)."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            if tag.encode() not in cmdline:
                continue
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(b"OMPI_COMM_WORLD_RANK="):
                found[int(pid)] = int(var.split(b"=")[1])
    return found


def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def main():
    if not shutil.which("mpirun"):
        print("mpirun is not installed")
        sys.exit(77)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "hang.jsonl")
        ckpt = os.path.join(tmp, "ckpt")
        args = [MOECTL, "run", CONFIG, "--headless", "--metrics", metrics,
                "--set", "data.path=" + CORPUS, "--set", "checkpoint.dir=" +
                ckpt, "--set", "checkpoint.every=20",
                "--set", "train.steps=1000000", "--set", "train.eval_every=0",
                "--set", f"train.collective_timeout={DEADLINE}"]
        job = subprocess.Popen(args, cwd=tmp, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240  # an ASan build starts slowly
        while time.time() < deadline:
            if os.path.exists(metrics) and '"checkpoint"' in open(metrics).read():
                break
            if job.poll() is not None:
                fail(f"the job ended first:\n{job.stderr.read()}")
            time.sleep(0.1)
        else:
            fail("no checkpoint within 240 s")
        pids = ranks_of(metrics)
        victim = [p for p, r in pids.items() if r == RANK]
        if len(pids) != 2 or len(victim) != 1:
            fail(f"the job's ranks: {pids}")
        os.kill(victim[0], signal.SIGSTOP)
        stopped = time.time()
        try:
            _, err = job.communicate(timeout=ENDS_WITHIN)
        except subprocess.TimeoutExpired:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            job.kill()
            fail(f"the job did not end within {ENDS_WITHIN} s of SIGSTOP")
        took = time.time() - stopped
        print(f"the job ended {took:.1f} s after rank {RANK} was stopped "
              f"(deadline {DEADLINE} s), exit {job.returncode}")
        report = [line for line in err.splitlines() if "watchdog" in line]
        if job.returncode != 1 or not report:
            fail(f"exit {job.returncode}, expected 1 with the watchdog's "
                 f"report:\n{err[-3000:]}")
        print(report[0])
        if f"watchdog: rank {RANK} does not answer" not in report[0] or \
                f"--resume {ckpt} continues" not in report[0]:
            fail("the report does not name the stopped rank and the resume")
        gone = time.time() + 20
        while time.time() < gone and any(alive(p) for p in pids):
            time.sleep(0.2)
        left = [p for p in pids if alive(p)]
        if left:
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            fail(f"ranks left running: {left}")
        # The checkpoint it names resumes.
        written = [json.loads(line) for line in open(metrics)
                   if '"checkpoint"' in line]
        last = written[-1]["step"]
        p = subprocess.run(args[:2] + [CONFIG, "--headless", "--set",
                           "data.path=" + CORPUS, "--set",
                           "checkpoint.dir=" + ckpt, "--set",
                           "train.steps=1000000", "--resume", ckpt,
                           "--steps", str(last + 5)],
                           cwd=tmp, env=env, capture_output=True, text=True,
                           timeout=600)
        if p.returncode != 0:
            fail(f"resume exited {p.returncode}:\n{p.stderr[-2000:]}")
        print(f"every rank is gone; the checkpoint at step {last} (or "
              f"newer) resumed")


main()
