#!/usr/bin/env bash
# The GPU checks of the CUDA backend in one run, for a machine with an
# NVIDIA GPU and the CUDA toolkit but no apt and no network (the device
# tool's machines). Prepare here, then run there:
#
#   here:   scripts/device-bundle.sh --fetch .device-debs
#           (and scripts/setup.sh once, for data/kjv.txt)
#   there:  scripts/device-check.sh .device-debs     carrying .device-debs
#                                                     and data
#
# Steps, each logged to build-device-check/ and summed up at the end; the
# logs, one after another, and the summary also go to $OUT when it is set
# (the device tool brings back at most 8 files from there):
#   1. nvidia-smi
#   2. the backend test built with nvcc, cc and OpenBLAS alone
#      (scripts/gpu-kernels-test.sh): every op against the CPU reference
#   3. the whole engine built against the unpacked packages
#      (scripts/device-bundle.sh)
#   4. mpi-gpu-rank: a CUDA rank beside a CPU rank against two CPU ranks
#   5. configs/mixed.yaml for 200 steps against the same job on two CPU
#      ranks (losses side by side)
#   6. configs/bench.yaml on one CUDA rank (fp32, tf32, bf16): tokens/s and
#      MFU against the configured peak, and the same on the CPU rank
#   7. the cuBLAS rate of the backend's GEMMs (tests/bench/gpu_gemm_rate.c)
#      and configs/ling-lite-layer.yaml (fp32, bf16) for 20 steps: tokens/s,
#      and MFU against that measured rate
# Exits 0 when every check passed.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
debs=${1:-.device-debs}
arch=${ARCH:-90}
out=build-device-check
rm -rf "$out"
mkdir -p "$out"
results=()
step() { # NAME COMMAND...: runs it, logs to $out/NAME.txt, keeps the verdict
    local name=$1
    shift
    printf '== %s\n' "$name" >&2
    "$@" >"$out/$name.txt" 2>&1
    local status=$?
    tail -5 "$out/$name.txt" >&2
    results+=("$name: exit $status")
    return $status
}

step nvidia-smi nvidia-smi
step gpu-ops env PATH="/usr/local/cuda/bin:$PATH" \
    scripts/gpu-kernels-test.sh --debs "$debs" --arch "$arch" --out build-gpu
if step build scripts/device-bundle.sh --build "$debs" --out build-device \
        --arch "$arch"; then
    # shellcheck disable=SC1091
    . build-device/env.sh
    moectl=$root/build-device/tui/moectl
    step mpi-gpu-rank python3 tests/mpi/test_mpi.py gpu_rank "$moectl" "$root"

    train() { # CONFIG STEPS NAME SETS...: a headless run logged to $out/NAME
        local config=$1 steps=$2 name=$3
        shift 3
        local sets=()
        for s in "$@"; do sets+=(--set "$s"); done
        rm -rf "$out/ckpt-$name"
        "$moectl" run "$config" --headless --steps "$steps" \
            --metrics "$out/$name.jsonl" --set data.path="$root/data/kjv.txt" \
            --set checkpoint.dir="$out/ckpt-$name" "${sets[@]}"
    }
    mixed() { train configs/mixed.yaml 200 "$@"; }
    step mixed-gpu mixed gpu
    step mixed-cpu mixed cpu cluster.devices.1.backend=cpu
    step mixed-compare python3 - "$out/mixed-gpu.jsonl" "$out/mixed-cpu.jsonl" <<'EOF'
import json, sys
def steps(path):
    return {r["step"]: r for r in map(json.loads, open(path))
            if r["type"] == "step"}
gpu, cpu = steps(sys.argv[1]), steps(sys.argv[2])
worst = 0.0
for s in sorted(cpu):
    rel = abs(gpu[s]["loss"] - cpu[s]["loss"]) / cpu[s]["loss"]
    worst = max(worst, rel)
    if s in (1, 10, 50, 100, 200):
        print(f"step {s}: loss {gpu[s]['loss']:.6f} with the CUDA rank, "
              f"{cpu[s]['loss']:.6f} on CPUs (relative {rel:.1e})")
print(f"worst relative difference over {len(cpu)} steps: {worst:.1e}")
sys.exit(0 if worst < 1e-2 else 1)
EOF
    bench() { train configs/bench.yaml 60 "$@" train.eval_every=0; }
    gpu_sets=(cluster.devices.0.backend=cuda cluster.devices.0.index=0
              cluster.devices.0.peak_tflops=67)
    step bench-cuda-fp32 bench cuda-fp32 "${gpu_sets[@]}"
    step bench-cuda-tf32 bench cuda-tf32 "${gpu_sets[@]}" \
        cluster.devices.0.precision=tf32
    step bench-cuda-bf16 bench cuda-bf16 "${gpu_sets[@]}" \
        cluster.devices.0.precision=bf16
    step bench-cpu bench cpu

    step gemm-rate build-device/tests/bench/gpu_gemm_rate
    ling() { # its final checkpoint is 9 GB: gone once the run is logged
        train configs/ling-lite-layer.yaml 20 "$@"
        local status=$?
        rm -rf "$out/ckpt-$1"
        return $status
    }
    step ling-fp32 ling ling-fp32
    step ling-bf16 ling ling-bf16 cluster.devices.0.precision=bf16
    step ling-mfu python3 - "$out" <<'EOF'
import json, os, re, statistics, sys
out = sys.argv[1]
rate = {}
for line in open(os.path.join(out, "gemm-rate.txt")):
    m = re.match(r"(\w+) square 8192\s+([\d.]+) TFLOP/s", line)
    if m:
        rate[m.group(1)] = float(m.group(2)) * 1e12
ok = True
for precision in ("fp32", "bf16"):
    path = os.path.join(out, f"ling-{precision}.jsonl")
    steps = [r for r in map(json.loads, open(path)) if r["type"] == "step"]
    late = steps[5:]
    flops = statistics.median(r["model_flops_per_s"] for r in late)
    tokens = statistics.median(r["tokens_per_s"] for r in late)
    peer = rate.get(precision)
    mfu = (f"{flops / peer:.1%} of the measured cuBLAS rate "
           f"{peer / 1e12:.1f} TFLOP/s") if peer else "no cuBLAS rate"
    print(f"Ling-Lite layer, {precision}: {tokens:,.0f} tokens/s, "
          f"{flops / 1e12:.2f} TFLOP/s of model FLOPs = {mfu} "
          f"(median of steps 6-{len(steps)})")
    ok = ok and peer is not None and len(steps) == 20
sys.exit(0 if ok else 1)
EOF
fi

printf '%s\n' "${results[@]}" | tee "$out/summary.txt"
if [ -n "${OUT:-}" ]; then
    for f in "$out"/*.txt; do
        printf '\n===== %s\n' "$(basename "$f" .txt)"
        cat "$f"
    done > "$OUT/device-check.log"
    cp "$out/summary.txt" "$OUT/summary.txt"
fi
! grep -qv 'exit 0$' "$out/summary.txt"
