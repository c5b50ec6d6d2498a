#!/usr/bin/env python3
"""`moectl demo`: the guided story on a live 2-rank job.

usage: test_demo.py CASE MOECTL SOURCE_ROOT

headless  runs `moectl demo --headless` to its end and recomputes every
          figure it narrates from the run's metrics file: each is a median
          over the steps the narration names ("... (median of steps A-B)"),
          printed with the precision the demo uses, so the strings match.
usage     bad options are refused with exit status 2.
console   the interactive demo in tmux with --autoplay: the narration pane
          walks through the chapters, q stops the job and restores the
          terminal.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CASE, MOECTL, ROOT = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
CONFIG = os.path.join(ROOT, "configs", "demo.yaml")
WINDOW = 40
HEADINGS = ["A mixed cluster starts", "Expert load turns uneven",
            "The straggler", "The operator moves an expert",
            "plan and apply rebalance", "policy auto keeps it balanced",
            "What a token costs"]
# The job runs under mpirun: see tests/mpi/test_mpi.py on leak checking.
if "ASAN_OPTIONS" in os.environ:
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def demo_args(tmp, metrics):
    return [MOECTL, "demo", CONFIG, "--metrics", metrics,
            "--steps-per-chapter", str(WINDOW),
            "--set", "data.path=" + CORPUS,
            "--set", "checkpoint.dir=" + os.path.join(tmp, "ck")]


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def median_over(steps, first, last, value):
    xs = [value(steps[s]) for s in range(first, last + 1) if s in steps]
    xs = [x for x in xs if x is not None]
    if len(xs) < (last - first + 1) * 0.9:
        fail(f"steps {first}-{last}: only {len(xs)} records in the metrics")
    return statistics.median(xs)


def check_medians(text, steps):
    """Every '(median of steps A-B)' figure, recomputed. Returns the count."""
    kinds = [
        (r"(\d+) tokens/s \(median of steps (\d+)-(\d+)\)",
         lambda r: r["tokens_per_s"], lambda x: f"{x:.0f}"),
        (r"([0-9.e-]+) USD \(median of steps (\d+)-(\d+)\)",
         lambda r: r["cost_per_mtok"], lambda x: f"{x:.4g}"),
        (r"([0-9.e-]+)% \(median of steps (\d+)-(\d+)\)",
         lambda r: None if r["mfu"] is None else r["mfu"] * 100,
         lambda x: f"{x:.3g}"),
    ]
    count = 0
    for pattern, value, form in kinds:
        for m in re.finditer(pattern, text):
            shown, first, last = m.group(1), int(m.group(2)), int(m.group(3))
            if last - first + 1 != WINDOW:
                fail(f"window {first}-{last} is not {WINDOW} steps: "
                     f"{m.group(0)}")
            want = form(median_over(steps, first, last, value))
            if shown != want:
                fail(f"narrated {m.group(0)!r}, the metrics give {want}")
            count += 1
    return count


def check_changes(text):
    """'X tokens/s (...) before, Y tokens/s (...) after: +Z%' adds up."""
    n = 0
    for m in re.finditer(r"(\d+) tokens/s \(median of steps [\d-]+\) "
                         r"(?:before|then), (\d+) tokens/s \(median of steps "
                         r"[\d-]+\) (?:after|now): ([-+][\d.]+)%", text):
        a, b, shown = float(m.group(1)), float(m.group(2)), m.group(3)
        # The change is from the unrounded medians, which lie within 0.5
        # of the integers shown: allow that, and the rounding of Z.
        low = ((b - 0.5) / (a + 0.5) - 1) * 100 - 0.05
        high = ((b + 0.5) / (a - 0.5) - 1) * 100 + 0.05
        if not low <= float(shown) <= high:
            fail(f"{m.group(0)!r}: the change is {(b / a - 1) * 100:+.2f}%")
        n += 1
    return n


def case_headless(tmp):
    metrics = os.path.join(tmp, "demo.jsonl")
    t0 = time.time()
    p = subprocess.run(demo_args(tmp, metrics) + ["--headless"], cwd=tmp,
                       capture_output=True, text=True, timeout=600)
    print(p.stdout)
    if p.returncode != 0:
        fail(f"moectl demo --headless exited {p.returncode}:\n{p.stderr}")
    print(f"demo took {time.time() - t0:.1f} s")
    out = p.stdout
    for i, heading in enumerate(HEADINGS):
        if f"== Demo {i + 1}/{len(HEADINGS)}: {heading} ==" not in out:
            fail(f"no heading for chapter {i + 1}: {heading}")
    if f"metrics: {metrics}" not in out:
        fail("the metrics path is not printed")
    text = " ".join(out.split())
    records = read_metrics(metrics)
    steps = {r["step"]: r for r in records if r["type"] == "step"}

    # Every median narrated, and every before/after change.
    n = check_medians(text, steps)
    if n < 10:
        fail(f"only {n} measured figures narrated")
    if check_changes(text) != 3:
        fail("expected three before/after throughput comparisons "
             "(move, apply, the whole story)")

    # Chapter 1: the devices as the run record names them.
    run = next(r for r in records if r["type"] == "run")
    for i, dev in enumerate(run["devices"]):
        want = f"rank {i} {dev['name']} {dev['backend']},"
        if want not in text:
            fail(f"chapter 1 does not name {want!r}")
    emulated = [d["name"] for d in run["devices"] if d["emulated"]]
    if not emulated or f"{emulated[0]} is an emulated slow device" not in text:
        fail("chapter 1 does not name the emulated device")

    # Chapter 2: max/mean per layer over the first window.
    m = re.search(r"median of steps (\d+)-(\d+)\): (layer .*?)\. Dead", text)
    if not m:
        fail("chapter 2 quotes no max/mean per layer")
    first, last = int(m.group(1)), int(m.group(2))
    for lm in re.finditer(r"layer (\d+) ([\d.]+)x", m.group(3)):
        layer = int(lm.group(1))
        want = median_over(steps, first, last,
                           lambda r: r["imbalance"]["max_mean"][layer])
        if lm.group(2) != f"{want:.2f}":
            fail(f"layer {layer} max/mean {lm.group(2)}, metrics {want:.2f}")

    # Chapter 3: the straggler's share and every rank's idle/compute.
    m = re.search(r"was the straggler in (\d+)% of steps (\d+)-(\d+)", text)
    if not m:
        fail("chapter 3 names no straggler")
    first, last = int(m.group(2)), int(m.group(3))
    names = [steps[s]["straggler"] for s in range(first, last + 1)
             if steps[s]["straggler"] is not None]
    top = max(set(names), key=names.count)
    if m.group(1) != f"{100 * names.count(top) / len(names):.0f}":
        fail(f"straggler share {m.group(1)}%")
    for r, dev in enumerate(run["devices"]):
        rm = re.search(rf"rank {r} {dev['name']} experts ([\d.]+) ms, "
                       rf"idle ([\d.]+) ms", text)
        if not rm:
            fail(f"chapter 3 has no line for rank {r}")
        for shown, key in [(rm.group(1), "expert_ms"), (rm.group(2), "idle_ms")]:
            want = median_over(steps, first, last, lambda s: s["ranks"][r][key])
            if shown != f"{want:.2f}":
                fail(f"rank {r} {key} {shown}, metrics {want:.2f}")

    # Chapter 1: the parameter counts are the run record's.
    run = next(r for r in records if r["type"] == "run")
    if (f"{run['params']} parameters, {run['active_params']} active per "
            "token") not in " ".join(text.split()):
        fail(f"chapter 1 does not give the run's {run['params']} parameters "
             f"and {run['active_params']} active")

    # Chapter 4: the move happened, at the step narrated, off the straggler.
    m = re.search(r"`move (\d+)\.(\d+) (\d+)`.*?At step (\d+) the job answered",
                  text)
    if not m:
        fail("chapter 4 narrates no move")
    command = f"move {m.group(1)}.{m.group(2)} {m.group(3)}"
    events = [r for r in records if r["type"] == "event"
              and r["command"] == command]
    if not events or events[0]["step"] != int(m.group(4)):
        fail(f"no event for {command} at step {m.group(4)}")
    took = re.search(r"\(the move took ([\d.]+) ms\)", text)
    if events[0].get("duration_ms") is not None and (
            not took or took.group(1) != f"{events[0]['duration_ms']:.1f}"):
        fail(f"the move's duration narrated {took and took.group(0)!r}, "
             f"recorded {events[0].get('duration_ms')}")
    layer, expert = int(m.group(1)), int(m.group(2))
    if steps[int(m.group(4))]["placement"][layer][expert] != top:
        fail(f"{command}: the expert was not on the straggler {top}")

    # Chapter 5: the apply and its plan_result, as recorded.
    applied = [r for r in records if r["type"] == "plan"
               and r["trigger"] == "apply"]
    if not applied:
        fail("no apply plan record")
    m = re.search(r"plan_result record at step (\d+): predicted ([\d.]+) ms a "
                  r"step, measured ([\d.]+) ms", text)
    if m:
        result = next(r for r in records if r["type"] == "plan_result"
                      and r["step"] == int(m.group(1)))
        if (m.group(2), m.group(3)) != (f"{result['predicted_ms']:.2f}",
                                        f"{result['measured_ms']:.2f}"):
            fail(f"plan_result narrated {m.group(0)!r}, recorded {result}")
    elif applied[0]["changes"]:
        fail("an applied plan with moves, and no plan_result narrated")

    # Chapter 6: the first decision of policy auto, as recorded.
    m = re.search(r"first decision, at step (\d+): (\d+) changes", text)
    if not m:
        fail("chapter 6 narrates no decision")
    autos = [r for r in records if r["type"] == "plan"
             and r["trigger"] == "auto"]
    if not autos or autos[0]["step"] != int(m.group(1)) or \
            autos[0]["changes"] != int(m.group(2)):
        fail(f"decision {m.group(0)!r}, recorded {autos[:1]}")

    # The end: stopped cleanly with a checkpoint.
    summary = records[-1]
    if summary["type"] != "summary" or summary["status"] != "stopped":
        fail(f"the job did not stop cleanly: {summary}")
    if not summary.get("checkpoint") or not os.path.exists(
            summary["checkpoint"]):
        fail("no checkpoint at the end")


def case_usage(tmp):
    for args, needle in [(["--bogus"], "unknown option --bogus"),
                         (["--steps-per-chapter", "3"], "--steps-per-chapter"),
                         (["--metrics"], "needs a value"),
                         ([CONFIG, "--set", "model.d_model=abc"],
                          "expected an integer")]:
        p = subprocess.run([MOECTL, "demo", "--headless"] + args, cwd=tmp,
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 2 or needle not in p.stderr:
            fail(f"demo {args}: exit {p.returncode}, {p.stderr!r}")
    p = subprocess.run([MOECTL, "--help"], capture_output=True, text=True)
    if "moectl demo" not in p.stdout:
        fail("--help does not mention moectl demo")


def case_console(tmp):
    if shutil.which("tmux") is None:
        print("tmux is not installed")
        sys.exit(77)
    session = f"moectl-demo-{os.getpid()}"

    def tmux(*args, check=True):
        p = subprocess.run(["tmux", "-L", session] + list(args),
                           capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"tmux {args}: {p.stderr}")
        return p.stdout

    def screen():
        return tmux("capture-pane", "-p", "-t", session, check=False)

    def wait_for(predicate, what, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        print(screen())
        fail("timed out waiting for " + what)

    metrics = os.path.join(tmp, "demo.jsonl")
    done = os.path.join(tmp, "exit-status")
    command = f"cd '{tmp}' && " + \
        " ".join(f"'{a}'" for a in demo_args(tmp, metrics)) + \
        f" --autoplay; echo $? > {done}; sleep 30"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30",
         "-e", "LANG=C.UTF-8", "-e", "NO_COLOR=1", command)
    try:
        seen = set()

        def chapter_shown(k):
            s = screen()
            for i in range(len(HEADINGS)):
                if f"Demo {i + 1}/{len(HEADINGS)}: {HEADINGS[i]}" in s:
                    seen.add(i + 1)
            return k in seen
        for k in range(1, len(HEADINGS) + 1):
            wait_for(lambda: chapter_shown(k), f"chapter {k} in the pane")
        wait_for(lambda: "The story is over" in screen(), "the end")
        final = screen()
        # The footer comes from the console's key table: the story's keys
        # first.
        if "Enter next  q quit" not in final:
            fail("the footer does not show the demo's keys")
        # The pane's figures are the headless ones, measured: a median.
        if not re.search(r"\d+ tokens/s \(median of steps \d+-\d+\)",
                         " ".join(final.split())):
            fail("no measured throughput in the last chapter")
        print(final)
        tmux("send-keys", "-t", session, "q")
        wait_for(lambda: os.path.exists(done), "the demo to exit", 60)
        with open(done) as f:
            status = f.read().strip()
        if status != "0":
            fail(f"moectl demo exited {status} after q")
        if tmux("display", "-p", "-t", session,
                "#{alternate_on}").strip() != "0":
            fail("the terminal was not restored")
        after = screen()
        if "the job stopped at step" not in after:
            fail("no word that the job stopped:\n" + after)
        records = read_metrics(metrics)
        if records[-1]["type"] != "summary" or \
                records[-1]["status"] != "stopped":
            fail("q did not stop the job cleanly")
        if len(seen) != len(HEADINGS):
            fail(f"chapters seen: {sorted(seen)}")
    finally:
        tmux("kill-server", check=False)


def main():
    if not os.path.exists(CORPUS):
        print("no corpus: run scripts/setup.sh")
        sys.exit(77)
    with tempfile.TemporaryDirectory() as tmp:
        {"headless": case_headless, "usage": case_usage,
         "console": case_console}[CASE](tmp)
    print("ok")


if __name__ == "__main__":
    main()
