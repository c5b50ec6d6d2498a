#!/usr/bin/env python3
"""The console as a person uses it: tmux runs moectl on a terminal,
send-keys types, capture-pane reads the screen. A 2-rank tiny job.

Figures on screen are checked against the metrics file: the job writes a
record there before any client hears of it, so the file holds every record
the console drew. Waits poll for a condition with a timeout (never a bare
sleep), so a loaded machine only makes the test slower.

usage: test_tmux.py MOECTL SOURCE_ROOT
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MOECTL, ROOT = os.path.abspath(sys.argv[1]), sys.argv[2]
CORPUS = os.path.join(ROOT, "data", "kjv.txt")
CONFIG = os.path.join(ROOT, "tests", "mpi", "tiny2.yaml")
SESSION = f"moectl-test-{os.getpid()}"
if "ASAN_OPTIONS" in os.environ:  # the job runs under mpirun: see test_mpi.py
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"


def fail(msg):
    print("FAIL:", msg)
    print(screen())
    sys.exit(1)


def tmux(*args, check=True):
    p = subprocess.run(["tmux", "-L", SESSION] + list(args),
                       capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"tmux {args}: {p.stderr}")
    return p.stdout


def screen():
    return tmux("capture-pane", "-p", "-t", SESSION, check=False)


def keys(*k):
    tmux("send-keys", "-t", SESSION, *k)
    time.sleep(0.3)


def wait_for(predicate, what, timeout=60, why=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    fail("timed out waiting for " + what + (f": {why()}" if why else ""))


def start_console(prefix, sets, width=120):
    """The console on a long 2-rank tiny job in a new tmux session, with
    --set `sets`; it prints CONSOLE-EXIT and its status when it leaves.
    Exits 77 without tmux or mpirun. Returns (its folder, metrics path)."""
    if shutil.which("tmux") is None or shutil.which("mpirun") is None:
        print("tmux or mpirun is not installed")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix=prefix)
    metrics = os.path.join(tmp, "m.jsonl")
    command = (f"cd {tmp} && TERM=xterm-256color {MOECTL} run {CONFIG} "
               f"--metrics {metrics} --set data.path={CORPUS} "
               f"--set checkpoint.dir={tmp}/ckpt --set train.steps=1000000 "
               + "".join(f"--set {s} " for s in sets) +
               "; echo CONSOLE-EXIT $?; sleep 60")
    tmux("new-session", "-d", "-s", SESSION, "-x", str(width), "-y", "40",
         "bash", "-c", command)
    return tmp, metrics


def main():
    tmp, metrics = start_console(
        "moectl-console-test-",
        ["train.eval_every=100", "checkpoint.every=0", "balance.every=200",
         "balance.min_gain=0"])
    job = None
    try:
        job = run_checks(metrics)
    finally:
        tmux("kill-server", check=False)
        if job:
            subprocess.run([MOECTL, "ctl", job, "stop"], capture_output=True)
        time.sleep(0.5)
        # A check that failed before the job's socket was known leaves the
        # job running detached (as a console that loses its terminal does):
        # end whatever still runs on this test's files.
        subprocess.run(["pkill", "-f", tmp], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok console")


def records(metrics):
    try:
        return [json.loads(l) for l in open(metrics) if l.endswith("\n")]
    except OSError:
        return []


def last_step(metrics):
    steps = [r for r in records(metrics) if r["type"] == "step"]
    return steps[-1] if steps else None


def steps_upto(metrics, step):
    return [r for r in records(metrics)
            if r["type"] == "step" and r["step"] <= step]


def ema(steps, value, weight=lambda r: r["step_ms"]):
    """The console's moving average (tui/console/view.h, view_figure): each record
    weighs weight(r) (its time for rates, its tokens for costs per token),
    decaying by 0.9 per newer record; after 150 steps where it began no
    longer shows."""
    total = weights = 0.0
    for r in steps:
        x = value(r)
        if x is not None:
            total = 0.9 * total + 0.1 * x * weight(r)
            weights = 0.9 * weights + 0.1 * weight(r)
    return total / weights if weights else None


def per_token(r):
    return r["tokens"]


def close(shown, want, rel):
    return want is not None and abs(shown - want) <= rel * abs(want) + 1e-12


def money(text):
    """format_money's output back to a number: 1.2k, 3.4M, 0.001078."""
    scale = {"k": 1e3, "M": 1e6}.get(text[-1], 1)
    return float(text.rstrip("kM")) * scale


def size_text(gb):
    """format_bytes in tui/console/console.c, for a figure in GB."""
    x, units = gb * 1e9, ["B", "KB", "MB", "GB", "TB"]
    u = 0
    while x >= 1000 and u < 4:
        x /= 1000
        u += 1
    return f"{x:.3g} {units[u]}"


def straggler_of(steps):
    """The console's straggler: the rank most often waited for over the
    last 64 steps, ties to the latest step's; and its share."""
    window = [r["straggler"] for r in steps[-64:]]
    counts = {}
    for rank in window:
        if rank is not None:
            counts[rank] = counts.get(rank, 0) + 1
    if not counts:
        return None, None
    most = max(counts.values())
    tied = [rank for rank, n in counts.items() if n == most]
    best = window[-1] if window[-1] in tied else min(tied)
    return best, most / len(window)


def figures_match(metrics, first_step):
    """None when every figure of the throughput, cost, heatmap and device
    panels on the screen agrees with the metrics file, else what does
    not. The console's averages begin at the first step record it heard
    of, at or before first_step (the step the test first saw drawn); once
    150 steps on, where they began no longer shows."""
    s = screen()
    m = re.search(r"step (\d+)/1000000", s)
    if not m:
        return "no step in the header"
    step = int(m.group(1))
    steps = steps_upto(metrics, step)
    if not steps or steps[-1]["step"] != step:
        return f"step {step} is in no step record"
    if step >= first_step + 150:
        starts = [steps[0]["step"]]
    elif first_step - steps[0]["step"] <= 60:
        starts = range(steps[0]["step"], first_step + 1)
    else:
        return f"step {step}: the averages have not settled yet"
    problems = f"step {step}: no records from the averages' start"
    for start in starts:
        since = [r for r in steps if r["step"] >= start]
        if not since:
            continue
        problems = panel_problems(s, since)
        if not problems:
            return None
    return problems


def panel_problems(s, steps):
    """What on screen s disagrees with the console fed these records."""
    last = steps[-1]
    problems = []

    m = re.search(r"tokens/s (\d+) now, (\d+) avg", s)
    if not m or abs(int(m.group(1)) - last["tokens_per_s"]) > 1 or not close(
            int(m.group(2)), ema(steps, lambda r: r["tokens_per_s"]), 0.01):
        problems.append("tokens/s")
    m = re.search(r"MFU ([\d.]+)%, (\d+)% of ideal", s)
    want_mfu = ema(steps, lambda r: r["mfu"])
    want_eff = ema(steps, lambda r: r["tokens_per_s"] / r["ideal_tokens_per_s"]
                   if r["ideal_tokens_per_s"] else None)
    if not m or not close(float(m.group(1)) / 100, want_mfu, 0.01) or \
            abs(int(m.group(2)) - 100 * want_eff) > 1:
        problems.append(f"MFU/ideal (want {want_mfu:.4g}, {want_eff:.3g})")
    m = re.search(r"cost ([\d.]+[kM]?) USD/hour", s)
    if not m or not close(money(m.group(1)), last["cost_per_hour"], 0.01):
        problems.append("cost per hour")
    m = re.search(r"([\d.]+[kM]?) USD per 1M tokens", s)
    want = ema(steps, lambda r: r["cost_per_mtok"], per_token)
    if not m or not close(money(m.group(1)), want, 0.01):
        problems.append(f"cost per 1M (want {want:.4g})")
    # The averages agree with each other: cost per token is the price over
    # the average rate.
    rate = re.search(r"tokens/s \d+ now, (\d+) avg", s)
    if m and rate and not close(money(m.group(1)), last["cost_per_hour"] /
                                3600 / int(rate.group(1)) * 1e6, 0.01):
        problems.append("cost per 1M is not the price over tokens/s avg")
    m = re.search(r"1B ([\d.]+[kM]?) USD  1T ([\d.]+[kM]?) USD", s)
    if not m or not close(money(m.group(1)),
                          ema(steps, lambda r: r["cost_per_btok"], per_token),
                          0.01) \
            or not close(money(m.group(2)),
                         ema(steps, lambda r: r["cost_per_ttok"], per_token),
                         0.06):
        problems.append("cost per 1B/1T")

    imb = last["imbalance"]
    for layer in (0, 1):
        want = (f"max {imb['max_mean'][layer]:.2f}x cv "
                f"{imb['cv'][layer]:.2f} dead {imb['dead'][layer]}")
        if not re.search(rf"^L{layer} .*{re.escape(want)}", s, re.M):
            problems.append(f"L{layer} stats (want {want!r})")

    for rank, r in enumerate(last["ranks"]):
        flops = f"{r['expert_flops_per_s'] / 1e9:.3g} GFLOP/s"
        # The model state against memory_gb, and all it holds.
        memory = f"mem {size_text(r['state_gb'])}/{size_text(r['capacity_gb'])}"
        used = (r["expert_state_gb"] + r["dense_state_gb"] +
                r["activations_gb"] + r["staging_gb"])
        held = f"holds {size_text(used)}"
        rows = f"{r['rows']} rows"
        if flops not in s or memory not in s or held not in s or \
                rows not in s:
            problems.append(f"rank {rank}: want {flops!r}, {memory!r}, "
                            f"{held!r}, {rows!r}")
    # The straggler's device entry is marked (the marker ends its second
    # line), and the heatmap's legend names it.
    rank, share = straggler_of(steps)
    if rank is not None:
        lines = s.split("\n")
        # The marker is an arrow, or < without UTF-8.
        marked = [i for i, l in enumerate(lines)
                  if re.search(r"[\u25c0<] straggler \d+%", l)]
        percent = round(share * 100)
        if len(marked) != 1 or not re.search(
                rf"[\u25c0<] straggler {percent}%", lines[marked[0]]) or \
                f" {rank} cpu{rank} " not in lines[marked[0] - 1] or \
                f"straggler {rank} ({percent}% of steps)" not in s:
            problems.append(f"straggler (want rank {rank}, {percent}%)")
    return ", ".join(problems)


def check_80x24(metrics):
    """At 80x24 (the job paused): the header's step, the loss and the
    throughput whole and as recorded, every panel there, and no number cut:
    text that does not fit ends after a whole word with a mark."""
    tmux("resize-window", "-t", SESSION, "-x", "80", "-y", "24")
    last = last_step(metrics)
    want_step = f"step {last['step']}/1000000"
    s = wait_for(lambda: (lambda t: t if want_step in t and
                          len(t.splitlines()[0]) <= 80 else None)(screen()),
                 "the console redrawn at 80x24")
    if f"{last['loss']:.4f}" not in s.splitlines()[1]:
        fail(f"80x24: the loss {last['loss']:.4f} is not whole in the title")
    for needed in ("Throughput and cost", "Expert load", "Devices",
                   "Balance", "Events", "cpu1", "? help"):
        if needed not in s:
            fail(f"80x24: {needed!r} is not on screen")
    m = re.search(r"tokens/s (\d+) now", s)
    if not m:
        fail("80x24: tokens/s is not whole")
    cut = [line for line in s.splitlines()
           if re.search(r"[\d.]\u2026|[\d.]~$", line)]
    if cut:
        fail(f"80x24: a number is cut: {cut}")
    tmux("resize-window", "-t", SESSION, "-x", "120", "-y", "40")
    wait_for(lambda: len(screen().splitlines()[0]) > 80,
             "the console redrawn at 120x40")


def run_checks(metrics):
    wait_for(lambda: "Expert load" in screen() and last_step(metrics),
             "the console to draw a running job")
    wait_for(lambda: re.search(r"step (\d+)/1000000", screen()) and
             re.search(r"Loss \S+ \d+\.\d{4}", screen()), "the header and loss")
    s = screen()
    # Numbers on screen match the metrics file (written before the console
    # hears of a record).
    m = re.search(r"Loss \S+ (\d+\.\d{4})", s)
    losses = {f"{r['loss']:.4f}" for r in records(metrics)
              if r["type"] == "step"}
    if m.group(1) not in losses:
        fail(f"loss {m.group(1)} on screen is in no step record")
    step_on_screen = int(re.search(r"step (\d+)/1000000", s).group(1))
    if not any(r["type"] == "step" and r["step"] == step_on_screen
               for r in records(metrics)):
        fail(f"step {step_on_screen} on screen is in no step record")
    if not re.search(r"tokens/s \d+ now", s):
        fail("no tokens/s on screen")
    if "per 1M tokens" not in s or "USD" not in s:
        fail("no cost on screen")
    if not re.search(r"^L0 ", s, re.M) or not re.search(r"^L1 ", s, re.M):
        fail("no heatmap rows")
    if "cpu1" not in s:
        fail("no device rows")

    # Throughput, MFU, cost, per-layer imbalance, device speed and memory
    # and the straggler, against the records (averages once settled).
    first_step = last_step(metrics)["step"]
    wait_for(lambda: figures_match(metrics, first_step) is None,
             "the panels to agree with the metrics file", 60,
             lambda: figures_match(metrics, first_step))

    # Move expert 0.0 with keys: m, then Enter, to the next rank.
    before = last_step(metrics)["placement"][0][0]
    keys("m")
    wait_for(lambda: "move expert 0.0 to rank" in screen(),
             "m to open the move prompt", 20)
    keys("Enter")
    wait_for(lambda: last_step(metrics)["placement"][0][0] != before,
             "the move in the metrics placement")

    # :lr 1e-4 through the command line.
    keys(":")
    keys("lr 1e-4", "Enter")
    wait_for(lambda: last_step(metrics)["lr"] == 1e-4,
             "lr 1e-4 in the metrics")

    # Balance. The job is paused while the screen is read, so that new
    # records cannot scroll what is checked away.
    def events(command):
        return [r for r in records(metrics)
                if r["type"] == "event" and r["command"] == command]

    def plans(trigger):
        return [r for r in records(metrics)
                if r["type"] == "plan" and r["trigger"] == trigger]

    def pause():
        count = len(events("pause"))
        keys("p")
        wait_for(lambda: len(events("pause")) > count, "the job to pause")
        wait_for(lambda: "[paused]" in screen(), "the console to say paused")

    def resume():
        count = len(events("resume"))
        keys("p")
        wait_for(lambda: len(events("resume")) > count, "the job to resume")

    # b: policy off -> suggest; the policy's turn suggests a plan.
    keys("b")
    wait_for(lambda: events("policy suggest"), "policy suggest from b")
    # The reply shows in the event log as soon as the console has it; the
    # suggestions that follow every 200 steps scroll it away within seconds.
    wait_for(lambda: re.search(r"step \d+: policy suggest every 200 "
                               r"min-gain 0%", screen()),
             "the event line with the reply to policy suggest", 10)
    wait_for(lambda: plans("suggest"), "a suggested plan", 120)
    pause()
    check_80x24(metrics)

    # a applies it: a plan record from "apply", its event with the reply,
    # and the plan in the balance band.
    keys("a")
    plan = wait_for(lambda: plans("apply"), "a plan record from a")[0]
    # The balance band's line, full or compact (four-digit steps and a
    # "measuring until step N" state push it past 120 columns).
    wait_for(lambda: re.search(rf"step {plan['step']}: apply: ", screen()) and
             re.search(rf"plan (at step )?{plan['step']} \(by apply\)",
                       screen()),
             "the apply event with its reply, and the plan")

    # b again: auto, in the balance band, the event log and status.
    keys("b")
    wait_for(lambda: events("policy auto"), "policy auto from b")
    wait_for(lambda: "Balance  policy auto every 200 steps" in screen() and
             re.search(r"step \d+: policy auto every 200 min-gain 0%",
                       screen()), "policy auto in the balance band and log")
    keys(":")
    keys("status", "Enter")
    wait_for(lambda: re.search(r"ok: step \d+ of 1000000, paused, .*policy "
                               r"auto", screen()),
             "status to report policy auto")

    # A plan carried out is measured: the latest result is on screen.
    resume()
    wait_for(lambda: [r for r in records(metrics)
                      if r["type"] == "plan_result"],
             "a plan_result record", 120)
    pause()
    result = [r for r in records(metrics) if r["type"] == "plan_result"][-1]
    want = (f"plan at step {result['applied_step']}: predicted "
            f"{result['predicted_ms']:.3g} ms, measured "
            f"{result['measured_ms']:.3g} ms")
    wait_for(lambda: want in screen(), f"{want!r} on screen")
    resume()

    # A resize redraws: the footer follows the last line.
    # Down to 80x24 every panel still shows, side by side panels keep a
    # column between them.
    for cols, rows in ((100, 30), (80, 24)):
        tmux("resize-window", "-t", SESSION, "-x", str(cols), "-y", str(rows))

        def laid_out():
            lines = screen().rstrip("\n").split("\n")
            starts = [l.split("  ")[0] for l in lines]
            return (len(lines) == rows and "? help" in lines[-1] and
                    "Balance" in starts and "Events" in starts and
                    any(re.match(r"Expert load.* Devices", l) for l in lines)
                    and any(re.match(r"Loss .* Throughput and cost", l)
                            for l in lines))
        wait_for(laid_out, f"the panels laid out at {cols}x{rows}", 20)

    # The ? overlay lists the keys, the new ones too.
    keys("?")
    wait_for(lambda: "pause / resume" in screen() and
             "balance policy: off -> suggest -> auto" in screen(),
             "? to show the help")
    keys("Escape")

    # Detach: the job goes on, and the console says how to attach.
    keys("q")
    keys("d")
    out = wait_for(lambda: "CONSOLE-EXIT" in screen() and screen(),
                   "the console to leave")
    m = re.search(r"moectl attach (\S+)", out)
    if not m or "CONSOLE-EXIT 0" not in out:
        fail("detach did not print how to attach")
    socket_path = m.group(1)
    # The terminal is restored: no alternate screen.
    if tmux("display", "-p", "-t", SESSION, "#{alternate_on}").strip() != "0":
        fail("the terminal was left in the alternate screen")
    step = last_step(metrics)["step"]
    wait_for(lambda: last_step(metrics)["step"] > step + 5,
             "the job to go on after detach")

    # Reattach in a new window, then stop the job from the console.
    tmux("new-window", "-t", SESSION,
         f"TERM=xterm-256color {MOECTL} attach {socket_path}; "
         f"echo ATTACH-EXIT $?; sleep 60")
    wait_for(lambda: re.search(r"step \d+/1000000", screen()),
             "the attached console to show the job")
    # The whole run's history, read from the run directory: the plot's
    # step axis starts at step 1, not where the console attached.
    wait_for(lambda: re.search(r"^ +step 1 ", screen(), re.M),
             "the attached console's plot to start at step 1")
    keys("s")
    keys("y")
    # The end: the summary stays on the screen until a key.
    end = wait_for(lambda: "Press any key to leave." in screen() and screen(),
                   "the end screen", 60)
    summary = records(metrics)[-1]
    if summary["type"] != "summary" or summary["status"] != "stopped":
        fail(f"the job did not stop cleanly: {summary}")
    want = [f"The job stopped at step {summary['last_step']}.",
            f"loss {summary['loss']:.4f}",
            f"tokens/s {summary['tokens_per_s']:.0f}",
            "run directory "]
    missing = [w for w in want if w not in end]
    if missing or "ATTACH-EXIT" in end:
        fail(f"the end screen lacks {missing} (or the console left)")
    keys("x")
    wait_for(lambda: "ATTACH-EXIT" in screen(), "the console to leave", 30)
    if "ATTACH-EXIT 3" not in screen():
        fail("stopping from the console should end with status 3")
    return None


if __name__ == "__main__":
    main()
