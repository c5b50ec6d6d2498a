#!/usr/bin/env python3
"""A metrics file whose disk fills up mid-run: every rank stops at the next
step boundary with a checkpoint, exit 1 with the reason, and the
checkpoint resumes.

The metrics file lives on a 256 KB tmpfs (as root, where mount works: a
real ENOSPC); elsewhere a 2 MB file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored)
makes the same write fail with EFBIG (one rank only: mpirun's own files
break under such a limit, so 2 ranks exit 77 there). Checkpoints go to an ordinary
directory. RANKS is 1 or 2 (2 needs mpirun; exit 77 without).

usage: test_full_disk.py RANKS MOECTL SOURCE_ROOT
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

RANKS, MOECTL = int(sys.argv[1]), os.path.abspath(sys.argv[2])
ROOT = os.path.abspath(sys.argv[3])
CONFIG = os.path.join(ROOT, "tests", "mpi", f"tiny{RANKS}.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
LIMIT = 256 * 1024
# A file-size limit counts every file: above a checkpoint shard's size.
FILE_LIMIT = 2 * 1024 * 1024


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def small_disk(path):
    """A LIMIT-byte file system at path; False where it cannot be had."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LIMIT}",
                           "tmpfs", path], capture_output=True).returncode == 0


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def main():
    if RANKS > 1 and not shutil.which("mpirun"):
        print("mpirun is not installed")
        sys.exit(77)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "disk")
        os.mkdir(disk)
        mounted = small_disk(disk)
        if not mounted and RANKS > 1:
            # mpirun's own shared-memory files break under a file-size
            # limit: a 2-rank job needs the real small disk.
            print("cannot mount a small tmpfs (needs root)")
            sys.exit(77)
        metrics = os.path.join(disk, "metrics.jsonl")
        ckpt = os.path.join(tmp, "ckpt")
        args = [MOECTL, "run", CONFIG, "--headless", "--metrics", metrics,
                "--set", "data.path=" + CORPUS, "--set",
                "checkpoint.dir=" + ckpt, "--set", "checkpoint.every=0",
                "--set", "train.steps=2000", "--set", "train.eval_every=0"]
        try:
            p = subprocess.run(args, cwd=tmp, env=env, capture_output=True,
                               text=True, timeout=240,
                               preexec_fn=None if mounted else limit_file_size)
            written = open(metrics, "rb").read()
        finally:
            if mounted:
                subprocess.run(["umount", disk])
        how = "a full 256 KB tmpfs" if mounted else "RLIMIT_FSIZE 2 MB"
        errno_text = "No space left on device" if mounted else "File too large"
        print(f"{how}: exit {p.returncode}")
        if p.returncode != 1 or f"cannot write metrics to {metrics}: " \
                f"{errno_text}" not in p.stderr:
            fail(f"exit {p.returncode}, expected 1 with the reason:\n"
                 f"{p.stderr[-3000:]}")
        line = [l for l in p.stderr.splitlines()
                if "cannot write metrics" in l][0]
        print(line)
        steps = [json.loads(l) for l in written.split(b"\n")[:-1]
                 if b'"type":"step"' in l]
        if not steps or steps[-1]["step"] >= 2000:
            fail("the disk did not fill up mid-run")
        # The checkpoint: the last step trained, whole, and it resumes.
        ckpts = sorted(os.listdir(ckpt))
        if not ckpts or "with a checkpoint: " not in line:
            fail(f"no checkpoint: {ckpts}")
        step = int(ckpts[-1].split("-")[1])
        if not steps[-1]["step"] <= step <= steps[-1]["step"] + 1:
            fail(f"checkpoint at step {step}, the file's last step "
                 f"{steps[-1]['step']}")
        p = subprocess.run(args[:2] + [CONFIG, "--headless", "--set",
                           "data.path=" + CORPUS, "--set",
                           "checkpoint.dir=" + ckpt, "--set",
                           "train.steps=2000", "--resume", ckpt, "--steps",
                           str(step + 5)], cwd=tmp, env=env,
                           capture_output=True, text=True, timeout=240)
        if p.returncode != 0:
            fail(f"resume exited {p.returncode}:\n{p.stderr[-2000:]}")
        print(f"{RANKS} rank(s) stopped at step {step} with a checkpoint, "
              "which resumed")


main()
