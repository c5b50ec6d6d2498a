#!/usr/bin/env python3
"""Run directories and the job list, as an operator uses them.

Two jobs run under --name; `moectl ps` lists both, drops one killed with
SIGKILL, and `moectl ctl NAME` reaches the other by name. A run directory
holds its resolved configuration, every record, its checkpoints and, while
it runs, its socket's path; a second run of the same name is refused;
`--resume runs/NAME` continues that run in place; a run's checkpoint
rotation never touches another run's checkpoints. The registry is this
test's own (XDG_RUNTIME_DIR), so other jobs on the machine do not count.

usage: test_runs.py MOECTL SOURCE_ROOT
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MOECTL, ROOT = os.path.abspath(sys.argv[1]), sys.argv[2]
CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def moectl(tmp, env, *args, check=True):
    p = subprocess.run([MOECTL] + list(args), cwd=tmp, env=env,
                       capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        fail(f"moectl {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


def ps(tmp, env):
    """NAME -> (pid, step, ranks, status) from `moectl ps`."""
    out = moectl(tmp, env, "ps").stdout
    if out.strip() == "no running jobs":
        return {}
    lines = out.splitlines()
    if not lines[0].split()[:6] == ["NAME", "PID", "STEP", "RANKS",
                                    "STATUS", "UPTIME"]:
        fail(f"ps header: {lines[0]!r}")
    jobs = {}
    for line in lines[1:]:
        w = line.split()
        jobs[w[0]] = (int(w[1]), w[2], int(w[3]), w[4], w[6])
    return jobs


def wait_for(predicate, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    fail("timed out waiting for " + what)


def start(tmp, env, name, *extra):
    return subprocess.Popen(
        [MOECTL, "run", CONFIG, "--headless", "--name", name,
         "--set", "data.path=" + CORPUS, "--set", "train.steps=1000000",
         "--set", "train.eval_every=0"] + list(extra),
        cwd=tmp, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


def records(path):
    return [json.loads(line) for line in open(path)]


def main():
    tmp = tempfile.mkdtemp(prefix="moectl-runs-test-")
    runtime = os.path.join(tmp, "xdg")
    os.mkdir(runtime, 0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=runtime)
    env.pop("MOECTL_RUNS_DIR", None)
    jobs = []
    try:
        if ps(tmp, env):
            fail("a fresh registry lists jobs")
        a = start(tmp, env, "alpha")
        b = start(tmp, env, "beta")
        jobs = [a, b]
        listed = wait_for(lambda: (lambda j: j if set(j) == {"alpha", "beta"}
                                   and all(v[3] == "running" and
                                           int(v[1].split("/")[0]) > 0
                                           for v in j.values()) else None)(
            ps(tmp, env)), "ps to list alpha and beta running")
        if listed["alpha"][0] != a.pid or listed["beta"][0] != b.pid or \
                listed["alpha"][2] != 1 or \
                not listed["alpha"][1].endswith("/1000000"):
            fail(f"ps rows: {listed}")
        noted = open(os.path.join(tmp, "runs", "alpha", "socket")).read()
        if noted.strip() != listed["alpha"][4]:
            fail(f"runs/alpha/socket says {noted!r}, ps {listed['alpha']}")

        # A job killed outright leaves its entry; ps drops it.
        os.kill(b.pid, signal.SIGKILL)
        b.wait()
        wait_for(lambda: set(ps(tmp, env)) == {"alpha"},
                 "ps to drop the killed job")

        # By name: pause shows in ps, then stop with a checkpoint.
        moectl(tmp, env, "ctl", "alpha", "pause")
        wait_for(lambda: ps(tmp, env).get("alpha", (0, 0, 0, ""))[3] ==
                 "paused", "ps to show alpha paused")
        moectl(tmp, env, "ctl", "alpha", "stop")
        if a.wait(timeout=60) != 3:
            fail(f"alpha stopped with exit {a.returncode}: {a.stderr.read()}")
        if ps(tmp, env):
            fail("a stopped job is still listed")
        bad = moectl(tmp, env, "ctl", "gamma", "status", check=False)
        if bad.returncode != 1 or "no running job is named gamma" not in \
                bad.stderr:
            fail(f"ctl to an unknown name: {bad.returncode} {bad.stderr}")

        # What a run directory holds.
        run = os.path.join(tmp, "runs", "alpha")
        have = sorted(os.listdir(run))
        if have != ["checkpoints", "config.yaml", "metrics.jsonl"]:
            fail(f"runs/alpha holds {have}")
        recs = records(os.path.join(run, "metrics.jsonl"))
        if recs[0]["type"] != "run" or recs[-1]["type"] != "summary" or \
                recs[-1]["status"] != "stopped":
            fail("runs/alpha/metrics.jsonl is not the whole run")
        stopped_at = recs[-1]["last_step"]
        ckpts = sorted(os.listdir(os.path.join(run, "checkpoints")))
        if ckpts[-1] != f"step-{stopped_at:08d}":
            fail(f"checkpoints {ckpts}, stopped at {stopped_at}")
        check = moectl(tmp, env, "check", os.path.join(run, "config.yaml"))
        if "1000000" not in check.stdout:
            fail("config.yaml is not the resolved configuration")

        # The same name again is refused; --resume continues in place.
        again = moectl(tmp, env, "run", CONFIG, "--headless", "--name",
                       "alpha", "--set", "data.path=" + CORPUS, check=False)
        if again.returncode != 2 or "already holds a run" not in again.stderr:
            fail(f"a second run named alpha: {again.returncode} "
                 f"{again.stderr}")
        # What writes cut short by a kill left: a single-file temp, a step
        # directory without a manifest, a temp inside a whole one.
        ck = os.path.join(run, "checkpoints")
        newest_dir = os.path.join(ck, f"step-{stopped_at:08d}")
        stale = [os.path.join(ck, "step-00000003.ckpt.tmp"),
                 os.path.join(ck, "step-99999990", "dense-x.bin.tmp"),
                 os.path.join(newest_dir, "experts-r0000-x.bin.tmp")]
        os.makedirs(os.path.dirname(stale[1]))
        for path in stale:
            with open(path, "wb") as f:
                f.write(b"\0" * 4096)
        moectl(tmp, env, "run", CONFIG, "--headless", "--resume", run,
               "--steps", str(stopped_at + 20),
               "--set", "data.path=" + CORPUS, "--set", "train.steps=1000000",
               "--set", "train.eval_every=0")
        left = [p for p in stale if os.path.exists(p)] + \
            ([stale[1]] if os.path.isdir(os.path.dirname(stale[1])) else [])
        if left:
            fail(f"temporary files outlived the restart: {left}")
        recs = records(os.path.join(run, "metrics.jsonl"))
        runs = [r for r in recs if r["type"] == "run"]
        steps = [r["step"] for r in recs if r["type"] == "step"]
        if len(runs) != 2 or runs[1]["resumed_from"] != stopped_at or \
                steps[-1] != stopped_at + 20 or \
                steps != sorted(steps):
            fail(f"the resumed run's records: runs {len(runs)}, steps "
                 f"...{steps[-3:]}")
        if sorted(os.listdir(os.path.join(tmp, "runs"))) != ["alpha", "beta"]:
            fail(f"--resume made another run directory: "
                 f"{os.listdir(os.path.join(tmp, 'runs'))}")

        # Another run's rotation (keep 1, a checkpoint every 5 steps) stays
        # in its own directory.
        before = sorted(os.listdir(os.path.join(run, "checkpoints")))
        moectl(tmp, env, "run", CONFIG, "--headless", "--name", "delta",
               "--steps", "20", "--set", "data.path=" + CORPUS,
               "--set", "checkpoint.every=5", "--set", "checkpoint.keep=1")
        if sorted(os.listdir(os.path.join(run, "checkpoints"))) != before:
            fail("another run's rotation removed alpha's checkpoints")
        delta = sorted(os.listdir(os.path.join(tmp, "runs", "delta",
                                               "checkpoints")))
        if delta != ["step-00000020"]:
            fail(f"delta's checkpoints with keep 1: {delta}")

        # Fire and forget: a client that sends `stop` and closes before the
        # job accepts it (the job is paused: it accepts at its next poll)
        # still stops the job.
        e = start(tmp, env, "epsilon")
        jobs.append(e)
        wait_for(lambda: "epsilon" in ps(tmp, env), "epsilon to be listed")
        moectl(tmp, env, "ctl", "epsilon", "pause")
        path = open(os.path.join(tmp, "runs", "epsilon", "socket")).read()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path.strip())
        s.sendall(b"stop\n")
        s.close()
        try:
            code = e.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fail("a stop sent by a client that closed at once was lost")
        if code != 3:
            fail(f"the fire-and-forget stop ended the job with exit {code}")

        # A job that does not accept (stopped, its backlog full): ctl gives
        # up within its timeout with the reason instead of blocking.
        z = start(tmp, env, "zeta")
        jobs.append(z)
        wait_for(lambda: "zeta" in ps(tmp, env), "zeta to be listed")
        path = open(os.path.join(tmp, "runs", "zeta", "socket")).read()
        os.kill(z.pid, signal.SIGSTOP)
        held = []
        for _ in range(64):  # past the listen backlog (16)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            if s.connect_ex(path.strip()) != 0:
                s.close()
                break
            held.append(s)
        start_ctl = time.time()
        late = moectl(tmp, env, "ctl", "zeta", "status", check=False)
        took = time.time() - start_ctl
        for s in held:
            s.close()
        os.kill(z.pid, signal.SIGCONT)
        if late.returncode != 1 or "did not accept the connection" not in \
                late.stderr or took > 60:
            fail(f"ctl to a job that does not accept: exit "
                 f"{late.returncode} after {took:.0f} s: {late.stderr}")
        moectl(tmp, env, "ctl", "zeta", "stop")
        if z.wait(timeout=60) != 3:
            fail(f"zeta stopped with exit {z.returncode}")
    finally:
        for j in jobs:
            if j.poll() is None:
                j.kill()
                j.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok runs: ps listed two jobs and dropped the killed one; ctl by "
          "name; the run directory whole; a second run of the name refused; "
          "--resume continued in place; rotation stayed within each run; "
          "a fire-and-forget stop was applied; ctl to a stopped job timed "
          "out with the reason; no temporary file outlived a restart")


main()
