#!/usr/bin/env python3
"""The console when a rank of its job stops answering: tmux runs the console
on a 2-rank job with train.collective_timeout 5 s; once a checkpoint is
written, rank 1 is stopped with SIGSTOP. The watchdog ends the job; the
console's events must show its report naming rank 1, `q` must leave at
once (no job to detach from), the terminal must be restored and the
console's exit status must be 1 with the report repeated on the terminal.

usage: test_hang_console.py MOECTL SOURCE_ROOT
"""
import os
import shutil
import signal
import subprocess

from test_tmux import fail, keys, screen, start_console, tmux, wait_for


def rank_pid(tag, rank):
    """The pid of the job's rank `rank` (its environment names the rank, its
    command line this test's files)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if tag.encode() not in open(f"/proc/{pid}/cmdline", "rb").read():
                continue
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(pid)
    return None


def main():
    tmp, metrics = start_console(
        "moectl-hang-console-", ["checkpoint.every=20", "train.eval_every=0",
                                 "train.collective_timeout=5"], width=160)
    stopped = None
    try:
        wait_for(lambda: os.path.exists(metrics) and
                 '"checkpoint"' in open(metrics).read(), "a checkpoint")
        stopped = wait_for(lambda: rank_pid(metrics, 1), "rank 1's pid")
        os.kill(stopped, signal.SIGSTOP)
        wait_for(lambda: "watchdog: rank 1 does not answer" in
                 screen().replace("\n", " "),
                 "the watchdog's report in the events", timeout=60,
                 why=screen)
        keys("q")
        s = wait_for(lambda: "CONSOLE-EXIT" in screen() and screen(),
                     "the console to leave on q", timeout=20, why=screen)
        if "CONSOLE-EXIT 1" not in s or "lost the job; it said:" not in s:
            fail("expected exit 1 with the job's last word")
        print("\n".join(l for l in s.splitlines() if l.strip()))
    finally:
        tmux("kill-server", check=False)
        subprocess.run(["pkill", "-KILL", "-f", tmp], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok: the console showed the watchdog's report and left on q")


main()
