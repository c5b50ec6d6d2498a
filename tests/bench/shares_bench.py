#!/usr/bin/env python3
"""Batch-shares benchmark: do mixed devices' speeds add up?

configs/default.yaml's model (batch 16 sequences of 128 bytes) on two CPU
ranks of one thread each, rank 1 emulated 3x slower (`slowdown: 3`). The
cases, each a job that stays alive for the whole run:

  ideal         rank 0's device alone (1 rank, 1 thread) and rank 1's (1
                rank, slowdown 3), as two jobs at the same time: the sum
                of their tokens/s is what the two devices add up to
  equal         2 ranks, equal shares (8 + 8 rows), the placement as
                configured (round-robin)
  proportional  2 ranks, shares fixed in the config at 3:1
                (cluster.devices[].batch_share)
  auto          2 ranks from equal shares with `policy auto every 50
                min-gain 0.02` from the start: plans choose rows and
                placement together
  two alike     2 ranks, neither slowed, equal shares: against twice the
                fast device alone, what two ranks side by side cost here

The machine (a shared VM of 2 vCPUs) changes speed by tens of percent
over minutes, more than the differences measured. So the cases take
turns: every job but the one measured is paused (moectl ctl pause: a
paused job sleeps on every rank) and the cases run in windows of a few
seconds, ideal, auto, ideal, equal, ideal, proportional, ideal, two
alike, ... ending with an ideal. Each window of a two-rank case is judged
against the mean of the ideal windows just before and just after it, so
a drift of the machine's speed cancels. `auto` first runs alone until its
plans have settled (--settle steps), the other jobs a few steps each.

A window's figure is the median tokens/s of the steps that ended in it,
less its first --skip seconds (the first steps after a resume). The
verdict is on the median over the rounds of auto against the ideal and
against equal shares. Targets (issue 14): auto >= 0.9 x ideal and >= 1.5 x
equal.

usage: shares_bench.py MOECTL [--rounds N] [--window S] [--skip S]
                        [--settle STEPS] [--keep DIR]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
# configs/default.yaml's model and batch on tests/mpi/tinyN.yaml's
# one-thread CPU devices.
MODEL = ["model.d_model=128", "model.n_layers=4", "model.n_heads=4",
         "model.seq_len=128", "moe.n_experts=8", "moe.top_k=2",
         "moe.n_shared=1", "moe.expert_hidden=256", "train.batch_size=16",
         "train.lr=3e-3", "train.eval_every=0", "checkpoint.every=0",
         "train.steps=1000000"]
SLOW = ["cluster.devices.1.slowdown=3"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


class Job:
    """One moectl job with a control socket and a metrics file."""

    def __init__(self, moectl, workdir, name, ranks, sets, extra=()):
        self.moectl, self.name = moectl, name
        self.metrics = os.path.join(workdir, name + ".jsonl")
        self.sock = os.path.join(workdir, name + ".sock")
        args = [moectl, "run", os.path.join(ROOT, f"tests/mpi/tiny{ranks}.yaml"),
                "--headless", "--steps", "1000000", "--metrics",
                self.metrics, "--socket", self.sock,
                "--set", "data.path=" + os.path.join(ROOT, "data", "kjv.txt"),
                "--set", "checkpoint.dir=" + os.path.join(workdir, name)]
        for s in MODEL + list(sets):
            args += ["--set", s]
        self.log = os.path.join(workdir, name + ".err")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                args + list(extra), cwd=ROOT, env=ENV,
                stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)

    def ctl(self, word):
        done = subprocess.run([self.moectl, "ctl", self.sock, word],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            self.failed(f"ctl {word}: {done.stdout}{done.stderr}")

    def failed(self, why):
        err = open(self.log).read()[-2000:]
        sys.exit(f"{self.name}: {why}\n{err}")

    def steps(self):
        try:
            lines = open(self.metrics).readlines()
        except OSError:
            return []
        return [r for r in (json.loads(l) for l in lines if l.endswith("\n"))
                if r["type"] == "step"]

    def wait_steps(self, n, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.failed(f"exit {self.proc.returncode}")
            st = self.steps()
            if st and st[-1]["step"] >= n:
                return
            time.sleep(0.2)
        self.failed(f"no step {n} in {timeout} s")

    def window(self, start, end):
        """Median tokens/s of the steps that ended in [start, end]."""
        both = [s["tokens_per_s"] for s in self.steps()
                if start <= s["time"] <= end]
        return statistics.median(both) if both else float("nan")

    def rows(self):
        st = self.steps()
        return [r["rows"] for r in st[-1]["ranks"]] if st else []

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def start(moectl, workdir, settle):
    """Every case's job, paused: auto after `settle` steps, the rest after
    a few steps each (their buffers grown)."""
    jobs = {"auto": Job(moectl, workdir, "auto", 2, SLOW,
                        ["--at", "1:policy auto every 50 min-gain 0.02"])}
    jobs["auto"].wait_steps(settle)
    jobs["auto"].ctl("pause")
    for name, ranks, sets in (
            ("equal", 2, SLOW),
            ("proportional", 2, SLOW + ["cluster.devices.0.batch_share=3"]),
            ("two alike", 2, []),
            ("fast", 1, []),
            ("slow", 1, ["cluster.devices.0.slowdown=3"])):
        jobs[name] = Job(moectl, workdir, name.replace(" ", "-"), ranks, sets)
        jobs[name].wait_steps(3)
        jobs[name].ctl("pause")
    return jobs


def run_window(jobs, names, seconds, skip):
    """Resumes `names` for `seconds`; returns {name: tokens/s} of the
    window less its first `skip` seconds."""
    for n in names:
        jobs[n].ctl("resume")
    began = time.time()
    time.sleep(seconds)
    ended = time.time()
    for n in names:
        jobs[n].ctl("pause")
    return {n: jobs[n].window(began + skip, ended) for n in names}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("moectl")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=12.0)
    parser.add_argument("--skip", type=float, default=1.5)
    parser.add_argument("--settle", type=int, default=250)
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the jobs' metrics and logs in DIR")
    a = parser.parse_args()
    moectl = os.path.abspath(a.moectl)
    pooled = ("auto", "equal", "proportional", "two alike")
    of_ideal, of_equal, alike = [], [], []
    with tempfile.TemporaryDirectory(prefix="moectl-shares-") as w:
        if a.keep:
            os.makedirs(a.keep, exist_ok=True)
            w = a.keep
        os.chmod(w, 0o700)
        jobs = {}
        try:
            jobs = start(moectl, w, a.settle)

            def ideal_window():
                got = run_window(jobs, ("fast", "slow"), a.window, a.skip)
                return got["fast"], got["slow"]

            before = ideal_window()
            for k in range(a.rounds):
                print(f"round {k + 1} (each case against the ideal windows "
                      f"just before and after it)")
                print(f"  {'case':<14}{'tokens/s':>10}{'ideal':>9}"
                      f"{'/ideal':>8}{'/equal':>8}  rows")
                got = {}
                for name in pooled:
                    value = run_window(jobs, (name,), a.window,
                                       a.skip)[name]
                    after = ideal_window()
                    fast = (before[0] + after[0]) / 2
                    ideal = (before[1] + after[1]) / 2 + fast
                    got[name] = (value, ideal, fast)
                    before = after
                equal = got["equal"][0]
                for name in ("auto", "equal", "proportional"):
                    value, ideal, _ = got[name]
                    print(f"  {name:<14}{value:>10.0f}{ideal:>9.0f}"
                          f"{value / ideal:>8.2f}{value / equal:>8.2f}  "
                          f"{jobs[name].rows()}", flush=True)
                value, _, fast = got["two alike"]
                print(f"  {'two alike':<14}{value:>10.0f}{2 * fast:>9.0f}"
                      f"{value / (2 * fast):>8.2f}          (against twice "
                      f"the fast device alone)", flush=True)
                of_ideal.append(got["auto"][0] / got["auto"][1])
                of_equal.append(got["auto"][0] / equal)
                alike.append(value / (2 * fast))
        finally:
            for job in jobs.values():
                job.stop()
    auto_ideal = statistics.median(of_ideal)
    auto_equal = statistics.median(of_equal)
    met = auto_ideal >= 0.9 and auto_equal >= 1.5
    print(f"auto, median of {a.rounds} rounds: {auto_ideal:.2f} of the ideal "
          f"(target >= 0.90; rounds {', '.join(f'{x:.2f}' for x in of_ideal)})"
          f", {auto_equal:.2f}x equal shares (target >= 1.5; rounds "
          f"{', '.join(f'{x:.2f}' for x in of_equal)}): "
          f"{'met' if met else 'MISSED'}")
    print(f"two alike ranks reach {statistics.median(alike):.2f} of twice "
          f"one rank alone (rounds {', '.join(f'{x:.2f}' for x in alike)})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
