#!/usr/bin/env python3
"""The Prometheus endpoint, scraped with curl as Prometheus would.

A job (two ranks where mpirun is installed, else one) runs with
--prometheus 0 (a free loopback port) and --prometheus-textfile. Once
paused, the exposition is checked: every sample has a TYPE, names start
with moectl_, counters end in _total, labels come from the bounded set
(rank, phase, layer, device, currency, the run's info; never an expert),
and values equal the last step record's (step, loss, tokens, step time,
MFU, each rank's phase times, each layer's imbalance) and the last
validation. The textfile holds the same text; other paths get 404, other
methods 405.

usage: test_prometheus.py MOECTL SOURCE_ROOT
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

MOECTL, ROOT = os.path.abspath(sys.argv[1]), sys.argv[2]
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
LABELS = {"rank", "phase", "layer", "device", "currency", "config", "run_id",
          "run_dir", "result"}
if "ASAN_OPTIONS" in os.environ:  # the job may run under mpirun
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def curl(*args):
    p = subprocess.run(["curl", "-s", "--max-time", "10"] + list(args),
                       capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"curl {args}: exit {p.returncode} {p.stderr}")
    return p.stdout


def parse(text):
    """{name: type}, [(name, {label: value}, float)]."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line.startswith("#") or not line:
            continue
        else:
            m = re.fullmatch(r'([a-z_]+)(?:\{(.*)\})? (\S+)', line)
            if not m:
                fail(f"not a sample line: {line!r}")
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"',
                                     m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def main():
    if shutil.which("curl") is None:
        print("curl is not installed")
        sys.exit(77)
    two = shutil.which("mpirun") is not None
    config = os.path.join(ROOT, "tests", "mpi", "tiny2.yaml") if two else \
        os.path.join(ROOT, "configs", "tiny.yaml")
    tmp = tempfile.mkdtemp(prefix="moectl-prometheus-test-")
    env = dict(os.environ, XDG_RUNTIME_DIR=tmp)
    textfile = os.path.join(tmp, "moectl.prom")
    job = subprocess.Popen(
        [MOECTL, "run", config, "--headless", "--name", "scraped",
         "--prometheus", "0", "--prometheus-textfile", textfile,
         "--set", "data.path=" + CORPUS, "--set", "train.steps=1000000",
         "--set", "train.eval_every=20"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        url = None
        deadline = time.time() + 60
        while not url and time.time() < deadline:
            line = job.stderr.readline()
            if not line:
                fail("the job ended before it served metrics")
            m = re.search(r"Prometheus metrics at (http://\S+)", line)
            url = m.group(1) if m else None
        if not url or not url.startswith("http://127.0.0.1:"):
            fail(f"the endpoint is not on loopback: {url}")
        metrics = os.path.join(tmp, "runs", "scraped", "metrics.jsonl")

        def steps():
            try:
                return [json.loads(l) for l in open(metrics)
                        if '"type":"step"' in l]
            except (OSError, ValueError):
                return []
        while len(steps()) < 45 and time.time() < deadline:
            time.sleep(0.1)
        pause = subprocess.run([MOECTL, "ctl", "scraped", "pause"], env=env,
                               capture_output=True, text=True, timeout=60)
        if pause.returncode != 0:
            fail(f"pause: {pause.stderr}")
        time.sleep(0.3)
        text = curl(url)
        records = [json.loads(l) for l in open(metrics)]
        step = [r for r in records if r["type"] == "step"][-1]
        val = [r for r in records if r["type"] == "val"][-1]
        types, samples = parse(text)

        if not text.endswith("# EOF\n"):
            fail("the exposition does not end with # EOF")
        for name, labels, _ in samples:
            if name not in types:
                fail(f"{name} has no TYPE line")
            if not name.startswith("moectl_"):
                fail(f"{name} lacks the moectl_ prefix")
            if (types[name] == "counter") != name.endswith("_total"):
                fail(f"{name} is a {types[name]}: counters, and only they, "
                     "end in _total")
            if set(labels) - LABELS:
                fail(f"{name} has unbounded labels {set(labels) - LABELS}")
        if len(samples) > 400:
            fail(f"{len(samples)} series for a 2-layer model")

        def one(name, **labels):
            got = [v for n, l, v in samples if n == name and
                   all(l.get(k) == str(x) for k, x in labels.items())]
            if len(got) != 1:
                fail(f"{name}{labels}: {len(got)} samples")
            return got[0]

        def same(name, want, rel=0.0, **labels):
            got = one(name, **labels)
            if not abs(got - want) <= rel * abs(want):
                fail(f"{name}{labels} = {got!r}, the records say {want!r}")

        same("moectl_step", step["step"])
        same("moectl_loss", step["loss"])
        same("moectl_learning_rate", step["lr"])
        same("moectl_tokens_total", step["tokens_seen"])
        same("moectl_step_seconds", step["step_ms"] / 1e3, 1e-15)
        same("moectl_tokens_per_second", step["tokens_per_s"])
        same("moectl_mfu_ratio", step["mfu"])
        same("moectl_model_flops_per_second", step["model_flops_per_s"])
        same("moectl_paused", 1)
        same("moectl_val_loss", val["val_loss"])
        same("moectl_val_step", val["step"])
        same("moectl_steps_total", len([r for r in records
                                        if r["type"] == "step"]))
        ranks = step["ranks"]
        for i, rank in enumerate(ranks):
            for phase in ("expert", "dense", "alltoall", "allreduce", "idle"):
                same("moectl_rank_phase_seconds", rank[phase + "_ms"] / 1e3,
                     1e-15, rank=i, phase=phase)
            same("moectl_rank_rss_bytes", rank["rss_gb"] * 1e9, 1e-15,
                 rank=i)
        for layer, x in enumerate(step["imbalance"]["max_mean"]):
            same("moectl_layer_load_max_mean_ratio", x, layer=layer)
            same("moectl_layer_dead_experts", step["imbalance"]["dead"][layer],
                 layer=layer)
        if one("moectl_run_info", config="tiny2" if two else "tiny") != 1:
            fail("moectl_run_info")

        if open(textfile).read() != text:
            fail("the textfile is not the endpoint's text")
        if curl("-o", "/dev/null", "-w", "%{http_code}",
                url.replace("/metrics", "/other")) != "404":
            fail("another path should be 404")
        if curl("-X", "POST", "-o", "/dev/null", "-w", "%{http_code}",
                url) != "405":
            fail("POST should be 405")
        subprocess.run([MOECTL, "ctl", "scraped", "stop"], env=env,
                       capture_output=True, timeout=60)
        if job.wait(timeout=60) != 3:
            fail(f"the job stopped with exit {job.returncode}")
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"ok prometheus: {len(samples)} series on {len(ranks)} rank(s), "
          "names, types, labels and values as the step records")


main()
