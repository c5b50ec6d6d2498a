#!/usr/bin/env python3
"""End-to-end tests of `moectl plan` on the Ling presets.

usage: test_plan.py CASE MOECTL SOURCE_ROOT

Each case runs the real binary; figures are recomputed here from the JSON
output with the formulas of engine/balance/cost.h.
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile

CASE, MOECTL = sys.argv[1], os.path.abspath(sys.argv[2])
ROOT = os.path.abspath(sys.argv[3])
PLUS = os.path.join(ROOT, "configs", "ling-plus.yaml")


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def run(args, tmp, want=0):
    """Runs moectl in tmp; returns (stdout, stderr)."""
    p = subprocess.run([MOECTL] + args, cwd=tmp, capture_output=True,
                       text=True, timeout=120)
    if want is not None and p.returncode != want:
        fail(f"moectl {' '.join(args)} exited {p.returncode}, want {want}:\n"
             f"{p.stderr}")
    return p.stdout, p.stderr


def plan_json(tmp, *sets):
    args = ["plan", PLUS, "--json"]
    for s in sets:
        args += ["--set", s]
    out, _ = run(args, tmp)
    try:
        return json.loads(out)
    except ValueError as e:
        fail(f"--json is not JSON ({e}):\n{out[:2000]}")


def plan_rows(plan):
    return plan["tokens_per_step"] / 4096  # ling-plus: seq_len 4096


def close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b))


def row(plan, names):
    rows = [m for m in plan["mixes"] if m["devices"] == names]
    if len(rows) != 1:
        fail(f"no single mix of {names}")
    return rows[0]


def case_text(tmp):
    out, _ = run(["plan", PLUS], tmp)
    for needle in ("parameters", "active", "step time", "tokens/s", "MFU",
                   "per 1T", "used GB", "experts", "all-reduce",
                   "time to 1.00T tokens", "Assumptions that drive it",
                   "utilization", "link_gbps", "not overlapped"):
        if needle not in out:
            fail(f"the text lacks {needle!r}:\n{out}")
    header = re.search(r"^  devices +ranks +step s +tokens/s +pool +MFU % +"
                       r"RMB/1T tok +days/1.00T +fits$", out, re.M)
    if not header:
        fail("the mixes table has no header:\n" + out)
    rows = re.findall(r"^  ([A-E](?:\+[A-E])*) +(\d+) +([\d.]+) +(\d+) +"
                      r"(-|[\d.]+) +([\d.]+) +([\d.]+[kMB]?) +([\d.]+) +"
                      r"yes(  <- cheapest)?(  <- fastest)?$", out, re.M)
    if len(rows) != 31:
        fail(f"{len(rows)} mixes, want 31 (every subset of A-E):\n{out}")
    marked = [r for r in rows if r[8]]
    if len(marked) != 1 or marked[0] is not rows[0]:
        fail("the first row, and only it, should be marked cheapest")
    fastest = [r for r in rows if r[9]]
    if len(fastest) != 1 or float(fastest[0][2]) != min(float(r[2])
                                                        for r in rows):
        fail("exactly the mix with the shortest step should be marked "
             "fastest")
    for r in rows:
        if (r[4] == "-") != ("+" not in r[0]):
            fail(f"{r[0]}: pool is for mixes of several types: {r[4]}")


def case_json(tmp):
    plan = plan_json(tmp)
    active = plan["model"]["active_params"]
    tokens_per_step = plan["tokens_per_step"]
    if not (0.98 < plan["model"]["total_params"] / 290e9 < 1.02 and
            0.98 < active / 28.8e9 < 1.02):
        fail(f"Ling-Plus parameters: {plan['model']}")
    for key in ("dense_flop_per_step", "expert_flop_per_step",
                "alltoall_bytes_per_step", "allreduce", "overlap"):
        if key not in plan["assumptions"]:
            fail(f"the JSON's assumptions lack {key}")
    mixes = plan["mixes"]
    if len(mixes) != 31:
        fail(f"{len(mixes)} mixes, want 31")

    d = row(plan, ["D"])
    if d["ranks"] != 64 or not d["fits"]:
        fail(f"D alone: {d}")
    # The paper's reference point: ~6.3M RMB per 1T tokens on device D.
    if abs(d["cost_per_1t_tokens"] / 6.3e6 - 1) > 0.05:
        fail(f"D alone costs {d['cost_per_1t_tokens']:.4g} per 1T, want "
             "6.3M within 5%")
    # The paper's MFU for D: compute at its utilization, for the part of
    # the step that is not communication.
    if abs(d["mfu"] - 0.21) > 0.005:
        fail(f"D alone: MFU {d['mfu']}, want the paper's 0.21")

    alone = {m["devices"][0]: m["tokens_per_s"] for m in mixes
             if len(m["devices"]) == 1}
    model = plan["model"]
    experts = model["layers"] * model["experts"]
    for m in mixes:
        if not m["fits"]:
            continue
        names = "+".join(m["devices"])
        types = m["device_types"]
        price = sum(t["count"] * t["price_per_hour"] for t in types)
        peak = sum(t["count"] * t["peak_tflops"] * 1e12 for t in types)
        if m["ranks"] != sum(t["count"] for t in types):
            fail(f"{names}: ranks")
        if not (close(m["price_per_hour"], price) and
                close(m["peak_flops"], peak)):
            fail(f"{names}: price or peak")
        tokens_per_s = m["tokens_per_s"]
        if not close(tokens_per_s, tokens_per_step / m["step_s"]):
            fail(f"{names}: tokens/s is not tokens per step / step time")
        if not close(m["cost_per_1t_tokens"],
                     price / 3600 / tokens_per_s * 1e12):
            fail(f"{names}: cost per 1T != price/h / 3600 / tokens/s")
        if not (close(m["cost_per_1m_tokens"] * 1e6, m["cost_per_1t_tokens"])
                and close(m["cost_per_1b_tokens"] * 1e3,
                          m["cost_per_1t_tokens"])):
            fail(f"{names}: 1M, 1B and 1T disagree")
        if not close(m["mfu"], 6 * active * tokens_per_s / peak):
            fail(f"{names}: MFU != 6 N_active tokens/s / peak")
        if not close(m["days_to_budget"],
                     plan["token_budget"] / tokens_per_s / 86400):
            fail(f"{names}: days to the budget")
        if m["equal_split_step_s"] is not None and \
                m["step_s"] > m["equal_split_step_s"] * (1 + 1e-9):
            fail(f"{names}: the plan is slower than the equal split")
        # The slowest type's time plus the all-reduce is the step.
        busiest = max(t["compute_s"] + t["exchange_s"] for t in types)
        if not close(m["step_s"], busiest + m["allreduce_s"], 1e-6):
            fail(f"{names}: step {m['step_s']} != slowest type {busiest} "
                 f"+ all-reduce {m['allreduce_s']}")
        rows = sum(t["rows_per_device"] * t["count"] for t in types)
        held = sum(t["experts_per_device"] * t["count"] for t in types)
        if not (close(rows, plan_rows(plan), 1e-6) and
                close(held, experts, 1e-6)):
            fail(f"{names}: {rows} rows of {plan_rows(plan)}, {held} "
                 f"experts of {experts}")
        for t in types:
            if t["used_gb"] > t["memory_gb"]:
                fail(f"{names}: {t['name']} uses {t['used_gb']} GB of "
                     f"{t['memory_gb']}")
            if t["rows_per_device"] < 1 - 1e-9:
                fail(f"{names}: {t['name']} trains less than a row")
        # Pooling: what the mix makes of its types alone, added up.
        members = sum(alone[n] for n in m["devices"])
        if not (close(m["members_tokens_per_s"], members) and
                close(m["pooling"], tokens_per_s / members)):
            fail(f"{names}: pooling against {members} tokens/s")
        # Issue 14: every two-type mix reaches 0.9 of its members' sum.
        if len(m["devices"]) == 2 and m["pooling"] < 0.9:
            fail(f"{names}: {tokens_per_s:.0f} tokens/s, "
                 f"{m['pooling']:.3f} of its members' {members:.0f}")

    costs = [m["cost_per_1t_tokens"] for m in mixes if m["fits"]]
    if costs != sorted(costs):
        fail("the mixes are not sorted by cost per 1T tokens")
    cheapest = [m for m in mixes if m["cheapest"]]
    if len(cheapest) != 1 or cheapest[0]["cost_per_1t_tokens"] != min(costs):
        fail("exactly the cheapest mix should be marked cheapest")
    everything = row(plan, ["A", "B", "C", "D", "E"])
    if not close(everything["cost_per_1t_tokens"],
                 plan["cluster"]["cost_per_1t_tokens"]):
        fail("the configured cluster and the mix of all devices differ")


def case_no_utilization(tmp):
    _, err = run(["plan", PLUS, "--set", "cluster.devices.1.utilization=0"],
                 tmp, want=2)
    lines = err.strip().splitlines()
    if len(lines) != 1 or "cluster.devices[1] (B)" not in err or \
            "utilization" not in err:
        fail(f"want one line naming cluster.devices[1] (B): {err!r}")


def case_not_fitting(tmp):
    # 8 x A (64 GB) cannot hold 290B parameters x 16 bytes.
    plan = plan_json(tmp, "cluster.devices.0.count=8")
    a = row(plan, ["A"])
    if a["fits"] or a["tokens_per_s"] is not None:
        fail(f"8 x A should not fit: {a}")
    model = plan["model"]
    experts = model["layers"] * model["experts"]
    need = (model["dense_params"] * 16 / 8 +
            math.ceil(experts / 8) * model["expert_params"] * 16) / 1e9
    if not close(a["need_gb_per_device"], need):
        fail(f"8 x A needs {need:.1f} GB a device, "
             f"says {a['need_gb_per_device']}")
    if not row(plan, ["A", "D"])["fits"]:
        fail("8 x A with 64 x D should fit")
    fits = [m["fits"] for m in plan["mixes"]]
    if fits != sorted(fits, reverse=True) or fits[-1]:
        fail("mixes that do not fit should be listed last")

    out, _ = run(["plan", PLUS, "--set", "cluster.devices.0.count=8"], tmp)
    if not re.search(r"^  A +8 +(?:- +){6}no: needs [\d.]+ GB a device$",
                     out, re.M):
        fail("the text does not report 8 x A as not fitting:\n" + out)

    # Replicated dense state (185 GB) fits no device at all.
    plan = plan_json(tmp, "plan.dense=replicated")
    if plan["cluster"]["fits"] or any(m["fits"] for m in plan["mixes"]):
        fail("replicated dense state should fit nowhere")
    out, _ = run(["plan", PLUS, "--set", "plan.dense=replicated"], tmp)
    if "does not fit" not in out:
        fail("the text does not say the cluster does not fit:\n" + out)


def case_bad_config(tmp):
    path = os.path.join(tmp, "bad.yaml")
    with open(path, "w") as f:
        f.write("model:\n  d_model: 64\n  n_layerz: 2\n")
    out, err = run(["plan", path], tmp, want=2)
    if not re.match(re.escape(path) + r":3:3: ", err) or out:
        fail(f"want {path}:3:3: on stderr and nothing on stdout: {err!r}")
    _, err = run(["plan"], tmp, want=2)
    if "plan needs a CONFIG" not in err:
        fail(f"plan without CONFIG: {err!r}")
    _, err = run(["plan", PLUS, "--bogus"], tmp, want=2)
    if "unknown option --bogus" not in err:
        fail(f"unknown option: {err!r}")


def main():
    with tempfile.TemporaryDirectory(prefix="moectl-plan-") as tmp:
        globals()["case_" + CASE](tmp)
    print("ok", CASE)


if __name__ == "__main__":
    main()
