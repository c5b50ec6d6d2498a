#!/usr/bin/env python3
"""Validation before work: what a run needs of the file system is refused
before any step (and before mpirun), with exit 2 and the reason, by `run`
and by `check` alike; input caps refuse what would take libyaml minutes.

Each case: an unwritable checkpoint directory (a path under a regular
file), a FIFO as the corpus, as CONFIG and as --script, a directory as the
corpus, a corpus too short for seq_len, a missing hostfile, a directory as
--metrics, and a 400 KB config of nested brackets. Every one exits 2
within the timeout, says why, names the key (with --set:1:1 or the file's
line and column), trains no step and leaves no run directory.

usage: test_gate.py MOECTL SOURCE_ROOT
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

MOECTL, ROOT = os.path.abspath(sys.argv[1]), sys.argv[2]
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
TINY2 = os.path.join(ROOT, "tests", "mpi", "tiny2.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def main():
    tmp = tempfile.mkdtemp(prefix="moectl-gate-test-")
    try:
        cases(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cases(tmp):
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    regular = os.path.join(tmp, "a-file")
    open(regular, "w").close()
    short = os.path.join(tmp, "short.txt")
    with open(short, "w") as f:
        f.write("in the beginning")
    nested = os.path.join(tmp, "nested.yaml")
    with open(nested, "w") as f:
        f.write("model:\n  d_model: " + "[" * 200000 + "]" * 200000 + "\n")
    corpus = "data.path=" + CORPUS
    config_with_fifo_corpus = os.path.join(tmp, "fifo-corpus.yaml")
    with open(config_with_fifo_corpus, "w") as f:
        f.write(f"data:\n  path: {fifo}\n")
    runs = [
        ("checkpoint dir under a file", TINY,
         [corpus, f"checkpoint.dir={regular}/ckpt"], [],
         "--set:1:1: checkpoint.dir: cannot write checkpoints"),
        ("FIFO corpus", TINY, [f"data.path={fifo}"], [],
         "--set:1:1: data.path: " + fifo + " is not a regular file"),
        ("FIFO corpus from the file", config_with_fifo_corpus, [], [],
         "fifo-corpus.yaml:2:3: data.path: "),
        ("directory corpus", TINY, [f"data.path={tmp}"], [],
         "is a directory, not a file"),
        ("short corpus", TINY, [f"data.path={short}"], [],
         "16 bytes is too small for seq_len 32"),
        ("missing hostfile", TINY2,
         [corpus, "launcher.hostfile=" + os.path.join(tmp, "hosts")], [],
         "--set:1:1: launcher.hostfile: "),
        ("FIFO script", TINY, [corpus], ["--script", fifo],
         "--script " + fifo + " is not a regular file"),
        ("directory metrics", TINY, [corpus], ["--metrics", tmp],
         "is a directory"),
        ("FIFO config", fifo, [], [], fifo + " is not a regular file"),
        ("nested config", nested, [], [],
         "nested.yaml:2:44: nested deeper than 32 levels"),
    ]
    for what, config, sets, extra, reason in runs:
        for command in ("run", "check"):
            if command == "check" and extra:
                continue  # run's own options
            args = [MOECTL, command, config]
            for s in sets:
                args += ["--set", s]
            if command == "run":
                args += ["--headless", "--steps", "3"] + extra
            start = time.time()
            try:
                p = subprocess.run(args, cwd=tmp, capture_output=True,
                                   text=True, timeout=30)
            except subprocess.TimeoutExpired:
                fail(f"{what}: {command} did not return in 30 s")
            took = time.time() - start
            if p.returncode != 2 or reason not in p.stderr:
                fail(f"{what}: {command} exited {p.returncode}, want 2 with "
                     f"{reason!r}:\n{p.stderr}")
            if "step " in p.stderr or os.path.exists(
                    os.path.join(tmp, "runs")):
                fail(f"{what}: {command} started work:\n{p.stderr}")
            print(f"{what}: {command} refused in {took:.2f} s: "
                  f"{p.stderr.splitlines()[0]}")
    print("ok gate: every case refused with exit 2 and its reason, no step "
          "trained, no run directory made")


main()
