#!/usr/bin/env python3
"""precision on a CPU device: bf16 GEMMs through oneDNN train configs/tiny.yaml
along the fp32 run, tf32 is refused with its reason.

bf16 rounds every GEMM's operands to 8 significant bits, so the two runs
are not bit-identical, and once they differ they follow trajectories of
their own (single steps' losses differ by up to 4% after step 20 on tiny at
lr 1e-2). What is checked over 200 steps: the first 10 steps' losses within
1e-3 of fp32's (relative), the mean loss of every 50 steps and every
validation loss within 2% (measured: 0.7% and 1.4%), and that the losses
differ (the bf16 path ran). A build without oneDNN must refuse bf16 with
the reason.

usage: test_precision.py MOECTL ROOT
"""
import json
import os
import subprocess
import sys
import tempfile

MOECTL, ROOT = os.path.abspath(sys.argv[1]), sys.argv[2]
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
TOLERANCE = 2e-2


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def train(tmp, precision, steps=200):
    """Returns (exit status, stderr, step losses by step, val losses)."""
    metrics = os.path.join(tmp, precision + ".jsonl")
    p = subprocess.run(
        [MOECTL, "run", TINY, "--headless", "--steps", str(steps),
         "--metrics", metrics, "--set", "data.path=" + CORPUS,
         "--set", "checkpoint.dir=" + os.path.join(tmp, precision),
         "--set", "cluster.devices.0.precision=" + precision,
         "--set", "train.eval_every=50"],
        cwd=tmp, capture_output=True, text=True, timeout=300)
    losses, val = {}, []
    if os.path.exists(metrics):
        for line in open(metrics):
            r = json.loads(line)
            if r["type"] == "step":
                losses[r["step"]] = r["loss"]
            elif r["type"] == "val":
                val.append(r["val_loss"])
            elif r["type"] == "run" and \
                    r["devices"][0]["precision"] != precision:
                fail(f"run record: precision {r['devices'][0]['precision']}"
                     f", want {precision}")
    return p.returncode, p.stderr, losses, val


def relative(a, b):
    return abs(a - b) / abs(b)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        rc, err, _, _ = train(tmp, "tf32", 5)
        if rc == 0 or "tf32" not in err or "cpu" not in err:
            fail(f"tf32 on a CPU device: exit {rc}, want a refusal\n{err}")
        rc, err, bf16, bf16_val = train(tmp, "bf16")
        if rc != 0:
            if "oneDNN" in err and "without" in err:
                print(f"built without oneDNN: bf16 refused ({err.strip()})")
                return
            fail(f"bf16: exit {rc}\n{err}")
        rc, err, fp32, fp32_val = train(tmp, "fp32")
        if rc != 0:
            fail(f"fp32: exit {rc}\n{err}")
        if sorted(bf16) != sorted(fp32) or len(fp32) != 200 or \
                len(fp32_val) != len(bf16_val) or len(fp32_val) < 4:
            fail(f"runs differ: {len(bf16)} and {len(fp32)} steps, "
                 f"{len(bf16_val)} and {len(fp32_val)} validations")
        early = max(relative(bf16[s], fp32[s]) for s in range(1, 11))
        if early > 1e-3:
            fail(f"bf16 off fp32 by {early:.3g} in the first 10 steps")
        windows = []
        for lo in range(1, 201, 50):
            mb = sum(bf16[s] for s in range(lo, lo + 50)) / 50
            mf = sum(fp32[s] for s in range(lo, lo + 50)) / 50
            windows.append(relative(mb, mf))
        vals = [relative(b, f) for b, f in zip(bf16_val, fp32_val)]
        if max(windows + vals) > TOLERANCE:
            fail(f"bf16 off fp32: windows' means {windows}, validations "
                 f"{vals} (tolerance {TOLERANCE})")
        if all(bf16[s] == fp32[s] for s in fp32):
            fail("bf16 losses equal the fp32 ones bit for bit: bf16 not used")
        print(f"tf32 refused; bf16 along fp32 over 200 steps: first 10 "
              f"steps within {early:.1e}, 50-step means within "
              f"{max(windows):.2%}, validation losses within {max(vals):.2%} "
              f"(tolerance {TOLERANCE:.0%}); final validation "
              f"{fp32_val[-1]:.4f} (fp32), {bf16_val[-1]:.4f} (bf16)")


if __name__ == "__main__":
    main()
