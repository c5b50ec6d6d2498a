#!/usr/bin/env python3
"""End-to-end tests of the moectl command line on configs/tiny.yaml.

usage: test_cli.py CASE MOECTL SOURCE_ROOT

Each case runs the real binary headless and reads its JSON Lines metrics.
"""
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

CASE, MOECTL, ROOT = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]

# The bench's rank rows run under mpirun: see tests/mpi/test_mpi.py on leak
# checking there.
if CASE == "bench" and "ASAN_OPTIONS" in os.environ:
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
CORPUS = os.path.join(ROOT, "data", "kjv.txt")


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def run(args, tmp, check=True, env=None):
    """Runs moectl in tmp; returns (exit status, stdout, stderr)."""
    p = subprocess.run([MOECTL] + args, cwd=tmp, capture_output=True,
                       text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        fail(f"moectl {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p.returncode, p.stdout, p.stderr


def train(tmp, name, extra=(), sets=()):
    """Trains tiny headless; returns the metrics records."""
    metrics = os.path.join(tmp, name + ".jsonl")
    args = ["run", TINY, "--headless", "--metrics", metrics,
            "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, name)]
    for s in sets:
        args += ["--set", s]
    run(args + list(extra), tmp)
    return read_metrics(metrics)


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def steps(records):
    return {r["step"]: r for r in records if r["type"] == "step"}


def trajectory(record):
    """What must match bit for bit between equivalent runs."""
    return (repr(record["loss"]), repr(record["grad_norm"]),
            repr(record["aux_loss"]), repr(record["z_loss"]),
            repr(record["lr"]), record["expert_load"])


def case_usage(tmp):
    rc, out, _ = run(["--help"], tmp)
    if "usage: moectl" not in out:
        fail("--help prints no usage")
    rc, out, _ = run(["--version"], tmp)
    if not out.startswith("moectl "):
        fail("--version: " + out)
    for args, needle in [
        (["--bogus"], "unknown option --bogus"),
        (["check"], "check needs a CONFIG"),
        (["run", TINY, "--steps", "abc"], "--steps needs a positive integer"),
        (["run", TINY, "--steps"], "option --steps needs a value"),
        (["check", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["run", TINY, "--set", "data.path=" + CORPUS, "--steps", "500"],
         "past train.steps"),
    ]:
        rc, _, err = run(args, tmp, check=False)
        if rc != 2 or needle not in err:
            fail(f"{args}: exit {rc}, stderr {err!r}; want 2 and {needle!r}")
    # Missing corpus: a runtime failure with a one-line reason.
    rc, _, err = run(["run", TINY, "--set", "data.path=missing.txt"], tmp,
                     check=False)
    # Refused before any work, pointing at the key that set it.
    if rc != 2 or "--set:1:1: data.path: missing.txt: no such file" not in err:
        fail(f"missing corpus: exit {rc}, stderr {err!r}")
    # check prints a resolved configuration that reads back the same.
    # (check is run's gate: the corpus must be there, as for run.)
    _, resolved, _ = run(["check", TINY, "--set", "train.lr=0.005",
                          "--set", "data.path=" + CORPUS], tmp)
    path = os.path.join(tmp, "resolved.yaml")
    with open(path, "w") as f:
        f.write(resolved)
    _, again, _ = run(["check", path], tmp)
    strip = lambda text: [l for l in text.splitlines() if not l.startswith("#")]
    if strip(again) != strip(resolved) or "lr: 0.005" not in resolved:
        fail("check output does not round-trip:\n" + resolved)


def case_determinism(tmp):
    a = steps(train(tmp, "a", ["--steps", "25"]))
    b = steps(train(tmp, "b", ["--steps", "25"]))
    if len(a) != 25:
        fail(f"{len(a)} step records, want 25")
    for s in a:
        if trajectory(a[s]) != trajectory(b[s]):
            fail(f"step {s} differs between two runs with one seed:\n"
                 f"{trajectory(a[s])}\n{trajectory(b[s])}")
    c = steps(train(tmp, "c", ["--steps", "25"], ["train.seed=43"]))
    if all(trajectory(a[s]) == trajectory(c[s]) for s in a):
        fail("a different seed gave the same losses")
    print("25 steps identical across runs; another seed differs")


def resume_matches(tmp, sets=()):
    """A run cut at step 100 and resumed equals the whole run, bit for bit,
    validation included. Returns the whole run's records."""
    full = train(tmp, "full", sets=sets)
    first = train(tmp, "half", ["--steps", "100"], sets)
    ckpts = [r for r in first if r["type"] == "checkpoint"]
    if not ckpts or ckpts[-1]["step"] != 100:
        fail(f"no checkpoint at step 100: {ckpts}")
    second = train(tmp, "resumed", ["--resume", os.path.join(tmp, "half")],
                   ("checkpoint.dir=" + os.path.join(tmp, "half"),) +
                   tuple(sets))
    f, r = steps(full), steps(second)
    if sorted(r) != list(range(101, 201)):
        fail(f"resumed run trained steps {min(r)}..{max(r)}, want 101..200")
    for s in range(101, 201):
        if trajectory(f[s]) != trajectory(r[s]):
            fail(f"step {s} after resume differs:\n{trajectory(f[s])}\n"
                 f"{trajectory(r[s])}")
    vf = {x["step"]: repr(x["val_loss"]) for x in full if x["type"] == "val"}
    vr = {x["step"]: repr(x["val_loss"]) for x in second if x["type"] == "val"}
    if not vr or any(vf.get(s) != vr[s] for s in vr):
        fail(f"val_loss after resume: {vf} vs {vr}")
    run_record = second[0]
    if run_record["type"] != "run" or run_record["resumed_from"] != 100:
        fail(f"first record of the resumed run: {run_record}")
    return full


def case_resume(tmp):
    resume_matches(tmp)
    print("steps 101..200 after resuming at 100 are bit-identical")


BALANCE = ("balance.bias_update_rate=0.01", "balance.routing_warmup_steps=150")


def to_single_file(step_dir, path, version):
    """Writes the sharded checkpoint step_dir as an earlier moectl's single
    file (format `version` 2, or 1 without the balancing block): header,
    placement, then weights, m and v, each one slab over every tensor with
    the experts' (L, E, .) between the router and the shared experts, then
    the balancing block and an FNV-1a checksum of everything before it."""
    import struct
    man = json.load(open(os.path.join(step_dir, "manifest.json")))
    d = man["dims"]
    C, L, E, F, S, V = (d["d_model"], d["n_layers"], d["n_experts"],
                        d["expert_hidden"], d["shared_hidden"], d["vocab"])
    dense = open(os.path.join(step_dir, man["dense"]["file"]), "rb").read()
    head = 8 + 4 + 36
    count = struct.unpack_from("<Q", dense, head)[0]
    at = head + 8
    slabs = [dense[at + 4 * count * k: at + 4 * count * (k + 1)]
             for k in range(3)]
    balance = dense[at + 12 * count:]
    before = 4 * (V * C + L * C + L * 3 * C * C + L * C * C + L * C +
                  L * E * C)  # wte .. router
    slot = 3 * F * C
    experts = {}
    for shard in man["shards"]:
        data = open(os.path.join(step_dir, shard["file"]), "rb").read()
        n = struct.unpack_from("<i", data, head)[0]
        at = head + 4
        for _ in range(n):
            l, e = struct.unpack_from("<ii", data, at)
            at += 8
            experts[(l, e)] = [data[at + 4 * slot * k: at + 4 * slot * (k + 1)]
                               for k in range(3)]
            at += 12 * slot
    body = bytearray(b"MOECTLCK")
    body += struct.pack("<I", version)
    body += struct.pack("<9i", V, C, L, d["n_heads"], d["seq_len"], E,
                        d["top_k"], F, S)
    body += struct.pack("<Q", count + L * E * slot)
    body += struct.pack("<iQQ", man["step"], man["tokens_seen"],
                        int(man["seed"], 16))
    body += struct.pack("<4Q", *(int(x, 16) for x in man["data_rng"]))
    for row in man["placement"]:
        body += struct.pack(f"<{len(row)}i", *row)
    for k in range(3):
        body += slabs[k][:before]
        for part in (slice(0, 4 * 2 * F * C), slice(4 * 2 * F * C, None)):
            for l in range(L):
                for e in range(E):
                    body += experts[(l, e)][k][part]
        body += slabs[k][before:]
    if version == 2:
        body += balance
    h = 0xcbf29ce484222325
    for b in body:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    with open(path, "wb") as f:
        f.write(bytes(body) + struct.pack("<Q", h))


def case_resume_single_file(tmp):
    """An earlier moectl's single-file checkpoint (versions 2 and 1) still
    resumes, bit for bit as the sharded checkpoint it was made from."""
    train(tmp, "sharded", ["--steps", "10"], ["train.eval_every=0"])
    step_dir = os.path.join(tmp, "sharded", "step-00000010")
    whole = steps(train(tmp, "after", ["--resume", step_dir, "--steps", "20"],
                        ["train.eval_every=0"]))
    for version in (2, 1):
        legacy = os.path.join(tmp, f"v{version}", "step-00000010.ckpt")
        os.makedirs(os.path.dirname(legacy))
        to_single_file(step_dir, legacy, version)
        after = steps(train(tmp, f"v{version}after",
                            ["--resume", os.path.dirname(legacy), "--steps",
                             "20"], ["train.eval_every=0"]))
        for s in range(11, 21):
            if trajectory(after[s]) != trajectory(whole[s]):
                fail(f"step {s} after a version-{version} single file "
                     f"differs:\n{trajectory(after[s])}\n"
                     f"{trajectory(whole[s])}")
    print("single-file checkpoints of versions 2 and 1 resume bit-identically")


def case_resume_balance(tmp):
    """Resuming in the middle of the routing warm-up, with bias balancing:
    the bias, the running logit statistics and the noise continue exactly."""
    f = steps(resume_matches(tmp, BALANCE))
    # The options took effect: warm-up routing at step 1 is noise, so its
    # loads differ from plain routing's; later the bias evens them out.
    plain = steps(train(tmp, "plain", ["--steps", "20"]))
    if plain[1]["expert_load"] == f[1]["expert_load"]:
        fail("the routing warm-up did not change step 1's routing")
    print("steps 101..200 after resuming at 100 (warm-up 150 steps, bias "
          "0.01) are bit-identical")



def case_train(tmp):
    records = train(tmp, "train")
    s = steps(records)
    first, last = s[1]["loss"], s[max(s)]["loss"]
    val = [r for r in records if r["type"] == "val"]
    if not 5.0 < first < 6.0:
        fail(f"first loss {first}, want about ln 256 = 5.55")
    if not val or val[-1]["val_loss"] >= 3.0 or last >= 3.0:
        fail(f"tiny did not learn: last loss {last}, val {val[-1:]}")
    print(f"loss {first:.3f} -> {last:.3f}, val_loss {val[-1]['val_loss']:.3f}")


def case_metrics(tmp):
    records = train(tmp, "m", ["--steps", "12"])
    cfg_layers, cfg_experts, top_k, tokens = 2, 4, 2, 8 * 32
    if records[0]["type"] != "run" or records[-1]["type"] != "summary":
        fail("the stream must start with a run record and end with a summary")
    run_record = records[0]
    for key in ("config", "params", "active_params", "flops_per_token",
                "tokens_per_step", "model", "devices", "currency"):
        if key not in run_record:
            fail(f"run record lacks {key}")
    if run_record["active_params"] >= run_record["params"]:
        fail("active parameters must exclude unchosen experts")
    kinds = {"step": 0, "val": 0, "checkpoint": 0}
    for r in records[1:-1]:
        kinds[r["type"]] += 1
        if r["type"] != "step":
            continue
        for key, kind in (("step", int), ("loss", float), ("lr", float),
                          ("grad_norm", float), ("tokens_per_s", float),
                          ("aux_loss", float), ("z_loss", float),
                          ("expert_load", list), ("tokens", int),
                          ("step_ms", float), ("model_flops_per_s", float)):
            if not isinstance(r.get(key), kind):
                fail(f"step record field {key}: {r.get(key)!r}")
        load = r["expert_load"]
        if len(load) != cfg_layers or any(len(x) != cfg_experts for x in load):
            fail(f"expert_load shape: {load}")
        if any(sum(x) != tokens * top_k for x in load):
            fail(f"expert_load rows must sum to tokens x top_k: {load}")
        if not (r["tokens_per_s"] > 0 and r["tokens"] == tokens):
            fail(f"throughput fields: {r}")
        if abs(r["tokens_per_s"] - r["tokens"] / (r["step_ms"] / 1e3)) > \
                1e-6 * r["tokens_per_s"]:
            fail("tokens_per_s is not tokens / step time")
        # One FLOP count: MFU is model FLOP/s over the summed peaks.
        peak = sum(d["peak_tflops"] for d in run_record["devices"]) * 1e12
        if abs(r["mfu"] - r["model_flops_per_s"] / peak) > 1e-9 * r["mfu"] \
                or abs(r["model_flops_per_s"] - run_record["flops_per_token"]
                       * r["tokens_per_s"]) > 1e-6 * r["model_flops_per_s"]:
            fail(f"mfu {r['mfu']} is not model_flops_per_s "
                 f"{r['model_flops_per_s']} / peak {peak}")
    if kinds["step"] != 12 or kinds["val"] != 1 or kinds["checkpoint"] != 1:
        fail(f"record counts {kinds}")
    summary = records[-1]
    if summary["last_step"] != 12 or summary["status"] != "done":
        fail(f"summary {summary}")
    # Every record: the schema version, a wall-clock time (Unix seconds,
    # in order) and one run_id for the whole run (record.h).
    if any(r.get("schema") != 2 for r in records):
        fail("a record without schema 2")
    times = [r.get("time") for r in records]
    if not all(isinstance(t, float) for t in times) or times != sorted(times) \
            or abs(times[0] - time.time()) > 600:
        fail(f"record times {times[:3]}...")
    run_ids = {r.get("run_id") for r in records}
    if len(run_ids) != 1 or not run_ids.pop().startswith("tiny-"):
        fail(f"run_id must be one per run, the config's name first: "
             f"{ {r.get('run_id') for r in records} }")
    # Step records carry the job's steerable state, so a late reader knows.
    state = [r for r in records if r["type"] == "step"][-1]["state"]
    if state != {"step": 11, "last_step": 12, "paused": False,
                 "lr": state["lr"], "ranks": 1, "placement_version": 1,
                 "policy": "off", "every": 50, "min_gain": 0.05}:
        fail(f"state of the last step record: {state}")
    # --metrics - writes the same records to stdout.
    rc, out, _ = run(["run", TINY, "--metrics", "-", "--steps", "2",
                      "--set", "data.path=" + CORPUS,
                      "--set", "checkpoint.dir=" + os.path.join(tmp, "o")], tmp)
    types = [json.loads(l)["type"] for l in out.splitlines()]
    if types[0] != "run" or types.count("step") != 2 or types[-1] != "summary":
        fail(f"stdout metrics: {types}")


def case_signal(tmp):
    metrics = os.path.join(tmp, "sig.jsonl")
    ckpt = os.path.join(tmp, "sig")
    args = [MOECTL, "run", TINY, "--metrics", metrics,
            "--set", "data.path=" + CORPUS, "--set", "checkpoint.dir=" + ckpt,
            "--set", "train.steps=100000", "--set", "train.eval_every=0"]
    p = subprocess.Popen(args, cwd=tmp, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(metrics) and open(metrics).read().count('"step"') > 5:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    if p.returncode != 3:
        fail(f"SIGINT: exit {p.returncode}, want 3\n{err}")
    records = read_metrics(metrics)
    stopped = records[-1]
    if stopped["type"] != "summary" or stopped["status"] != "stopped":
        fail(f"last record {stopped}")
    if not stopped["checkpoint"] or not os.path.exists(stopped["checkpoint"]):
        fail("no checkpoint after SIGINT")
    at = stopped["last_step"]
    leftovers = [f for f in os.listdir(ckpt) if ".tmp" in f]
    if leftovers:
        fail(f"temporary files left behind: {leftovers}")
    resumed = train(tmp, "after", ["--resume", ckpt, "--steps", str(at + 3)],
                    ["train.steps=100000", "train.eval_every=0"])
    if sorted(steps(resumed)) != [at + 1, at + 2, at + 3]:
        fail("could not resume from the checkpoint written on SIGINT")
    # A hang-up (the terminal closed) stops the same way: a checkpoint and
    # exit 3, not 129 with nothing written.
    hup_metrics = os.path.join(tmp, "hup.jsonl")
    p = subprocess.Popen(args[:3] + ["--metrics", hup_metrics] + args[5:],
                         cwd=tmp, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (
            os.path.exists(hup_metrics) and
            open(hup_metrics).read().count('"step"') > 5):
        time.sleep(0.05)
    p.send_signal(signal.SIGHUP)
    _, err = p.communicate(timeout=60)
    hup = read_metrics(hup_metrics)[-1]
    if p.returncode != 3 or hup["type"] != "summary" or \
            not os.path.exists(hup["checkpoint"] or ""):
        fail(f"SIGHUP: exit {p.returncode}, last record {hup}\n{err}")
    print(f"stopped at step {at} with exit 3 and a checkpoint that resumes; "
          f"SIGHUP the same")


def case_corrupt_checkpoint(tmp):
    """A sharded checkpoint is checked file by file against its manifest:
    a truncated shard, a flipped byte, a missing manifest, another shape and
    a broken single-file checkpoint are each refused with the reason, exit
    1, before training starts."""
    records = train(tmp, "cc", ["--steps", "3"])
    path = [r for r in records if r["type"] == "checkpoint"][-1]["path"]
    names = sorted(os.listdir(path))
    shard = os.path.join(path, next(n for n in names
                                    if n.startswith("experts-")))
    dense = os.path.join(path, next(n for n in names
                                    if n.startswith("dense-")))

    def refused(why, want, *sets, resume=path):
        args = ["run", TINY, "--resume", resume, "--set",
                "data.path=" + CORPUS]
        for s in sets:
            args += ["--set", s]
        rc, _, err = run(args, tmp, check=False)
        if rc != 1 or want not in err:
            fail(f"{why}: exit {rc}, {err!r}")

    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) // 2])
    refused("truncated shard", "truncated or corrupt")
    with open(shard, "wb") as f:
        f.write(data)
    kept = open(dense, "rb").read()
    with open(dense, "wb") as f:
        f.write(kept[:-9] + bytes([kept[-9] ^ 1]) + kept[-8:])
    refused("a flipped byte", "truncated or corrupt")
    with open(dense, "wb") as f:
        f.write(kept)
    refused("another shape", "model.d_model = 32", "model.d_model=64")
    manifest = os.path.join(path, "manifest.json")
    os.rename(manifest, manifest + ".aside")
    refused("no manifest", "no whole checkpoint",
            resume=os.path.dirname(path))
    os.rename(manifest + ".aside", manifest)
    # A forged manifest: an expert on rank -1, or past the recorded ranks.
    text = open(manifest).read()
    for forged in (-1, 7):
        doc = json.loads(text)
        doc["placement"][0][0] = forged
        with open(manifest, "w") as f:
            json.dump(doc, f)
        refused(f"an expert on rank {forged}", "a malformed placement")
    with open(manifest, "w") as f:
        f.write(text)
    legacy = os.path.join(tmp, "step-00000003.ckpt")
    with open(legacy, "wb") as f:
        f.write(b"MOECTLCK" + bytes(64))
    refused("a broken single-file checkpoint", "unsupported single-file "
            "checkpoint version 0", resume=legacy)
    print("truncated, corrupt, headless, misshapen, forged and single-file "
          "checkpoints refused with the reason")


def case_bench(tmp):
    """moectl bench runs end to end; its figures are consistent with each
    other (no timing is asserted)."""
    rc, out, err = run(["bench", TINY, "--no-peer", "--no-scaling",
                        "--profile", "--steps", "3", "--warmup", "1",
                        "--repeat", "1",
                        "--set", "data.path=" + CORPUS], tmp)
    import re
    m = re.search(r"moectl: (\d+) tokens/s .* step ([\d.]+) ms, ([\d.]+) "
                  r"model GFLOP/s = (\d+)% of sgemm", out)
    g = re.search(r"OpenBLAS sgemm 2048\^3 \(1 threads\): ([\d.]+) GFLOP/s",
                  out)
    if not m or not g:
        fail("bench output lacks the throughput or sgemm line:\n" + out)
    tokens_per_s, step_ms, gflops, share = (float(x) for x in m.groups())
    # The step time is printed to 0.1 ms: on tiny (about 1 ms a step) that
    # rounding alone moves the product by up to 0.05 ms of tokens.
    slack = tokens_per_s * 0.05e-3 + 0.01 * 8 * 32
    if abs(tokens_per_s * step_ms / 1e3 - 8 * 32) > slack:
        fail(f"tokens/s x step time should be the 256 tokens of a step: {out}")
    if abs(100 * gflops / float(g.group(1)) - share) > 1.5:
        fail("the sgemm share does not follow from the two figures")
    parts = re.findall(r"^  (\w+) .*?([\d.]+) +([\d.]+)%$", out, re.M)
    names = {p[0] for p in parts}
    for part in ("attention", "router", "permute", "experts", "optimizer"):
        if part not in names:
            fail(f"--profile lacks {part}:\n{out}")
    rows = re.findall(r"^  ([124]) +(\d+) +([\d.]+) +([\d.]+)% +(\S+)$", out,
                      re.M)
    if [r[0] for r in rows] != ["1", "2", "4"]:
        fail(f"the rank rows are missing:\n{out}")
    if rows[0][4] != "-" or not all(float(r[4]) > 0 for r in rows[1:]):
        fail(f"migration times: {rows}")


def main():
    with tempfile.TemporaryDirectory(prefix="moectl-test-") as tmp:
        globals()["case_" + CASE](tmp)
    print("ok", CASE)


if __name__ == "__main__":
    main()
