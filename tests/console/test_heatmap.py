#!/usr/bin/env python3
"""The expert heatmap of a real model's width: 64 experts x 8 layers on one
rank, in tmux at 120x40 and then 80x24. The cursor walks to expert 63 of
layer 7; the heatmap scrolls with it, the header names the experts shown,
and the selection line shows 7.63 with the count the job recorded (the job
is paused first, so the screen and the metrics file hold the same step).

usage: test_heatmap.py MOECTL SOURCE_ROOT
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# The tmux harness of the console test (one session a process; the same
# MOECTL SOURCE_ROOT arguments): tmux, screen, fail, wait_for, last_step.
from test_tmux import (MOECTL, ROOT, SESSION, fail, last_step, screen, tmux,
                       wait_for)

CORPUS = os.path.join(ROOT, "data", "kjv.txt")
CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")


def header(text):
    """The expert indices of the heatmap's header row ("exp   41 42 ..."):
    consecutive numbers from the first (the panel beside it follows)."""
    line = next((l for l in text.splitlines() if l.startswith("exp ")), "")
    indices = []
    for word in line[3:].split():
        if not word.isdigit() or (indices and int(word) != indices[-1] + 1):
            break
        indices.append(int(word))
    return indices


def check_selection(metrics, where):
    # The long form, or the compact one where it does not fit.
    pattern = r"(?:expert 7\.63 on rank 0: (\d+) tokens|7\.63 rank 0: (\d+) tok)"
    text = wait_for(lambda: (lambda s: s if re.search(pattern, s)
                             else None)(screen()),
                    f"the selection line at 7.63 ({where})")
    found = re.search(pattern, text)
    shown = int(found.group(1) or found.group(2))
    want = last_step(metrics)["expert_load"][7][63]
    if shown != want:
        fail(f"{where}: expert 7.63 shows {shown} tokens, the paused "
             f"job's last step has {want}")
    if not re.search(r"\[(?:experts )?\d+-63(?: of |/)64\]", text):
        fail(f"{where}: the selection line does not say which experts "
             "are shown")
    if not any(line.startswith("L7 ") for line in text.splitlines()):
        fail(f"{where}: layer 7's row is not on screen")
    return text


def main():
    if shutil.which("tmux") is None:
        print("tmux is not installed")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="moectl-heatmap-test-")
    metrics = os.path.join(tmp, "m.jsonl")
    command = (f"cd {tmp} && TERM=xterm-256color {MOECTL} run {CONFIG} "
               f"--metrics {metrics} --set data.path={CORPUS} "
               f"--set checkpoint.dir={tmp}/ckpt --set train.steps=1000000 "
               f"--set train.eval_every=0 --set checkpoint.every=0 "
               f"--set moe.n_experts=64 --set model.n_layers=8; "
               f"sleep 60")
    tmux("new-session", "-d", "-s", SESSION, "-x", "120", "-y", "40",
         "bash", "-c", command)
    try:
        wait_for(lambda: re.search(r"^L7 ", screen(), re.M),
                 "the heatmap's layer 7")
        head = header(screen())
        if head[:2] != [0, 1] or head != list(range(len(head))):
            fail(f"no expert index header: {head}")
        tmux("send-keys", "-t", SESSION, "p")
        wait_for(lambda: "[paused]" in screen(), "the job to pause")
        time.sleep(0.5)  # the last record of the step it paused at
        for _ in range(7):
            tmux("send-keys", "-t", SESSION, "j")
        for _ in range(63):
            tmux("send-keys", "-t", SESSION, "l")
        text = check_selection(metrics, "120x40")
        head = header(text)
        if not head or head[-1] != 63 or head != list(range(head[0], 64)):
            fail(f"the header did not scroll to expert 63: {head}")
        tmux("resize-window", "-t", SESSION, "-x", "80", "-y", "24")
        check_selection(metrics, "80x24")
        # Back to the first expert: the window scrolls back.
        for _ in range(63):
            tmux("send-keys", "-t", SESSION, "h")
        wait_for(lambda: re.search(r"(?:expert 7\.0 on|^7\.0) rank 0",
                                   screen(), re.M),
                 "the cursor back at expert 0")
        head = header(screen())
        if not head or head[0] != 0:
            fail(f"the header did not scroll back: {head}")
        tmux("send-keys", "-t", SESSION, "s")
    finally:
        tmux("kill-server", check=False)
        time.sleep(0.5)
        subprocess.run(["pkill", "-f", tmp], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok heatmap: 64 experts x 8 layers, the cursor at 7.63 at 120x40 "
          "and 80x24, its count as recorded")


main()
