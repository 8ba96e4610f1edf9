#!/usr/bin/env bash
# One prepared GPU check (issue 10): install the CUDA build of onnxruntime with the CUDA and
# cuDNN runtime wheels, run the GPU tests, then the campaign and overhead benchmarks on CUDA
# (trial / golden at K = 1, 1k, 100k, 1M, weights and activations), and write everything
# to one JSON file. Budget: under 5 minutes including the installs.
#
#   bash scripts/gpu_check.sh [OUT_DIR]       # default: $OUT, else gpu_check/
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check}}"
mkdir -p "$out"
start=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - start ))s] $*" >&2; }

log "install"
pip install -q torch==2.13.0 2>/dev/null || true
pip uninstall -y -q onnxruntime 2>/dev/null || true
pip install -q -e '.[cuda,dev]'
python - <<'PY' | tee "$out/providers.txt"
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
print(ort.__version__, ort.get_available_providers())
ort.print_debug_info() if hasattr(ort, "print_debug_info") else None
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" || true

log "GPU tests"
set +e
timeout 120 python -m pytest -q -k "cuda or gpu" tests > "$out/pytest.txt" 2>&1
tests_rc=$?
log "campaign benchmark on CUDA"
timeout 150 python scripts/bench_campaign.py --provider cuda --ks 1,1000,100000,1000000 \
    --max-cell-seconds 20 --reduced-n2 4 --out "$out/bench_campaign_cuda.json" \
    > "$out/bench_campaign.txt" 2>&1
campaign_rc=$?
log "overhead benchmark on CUDA"
timeout 60 python scripts/bench_overhead.py --provider cuda --pairs 10 \
    --out "$out/bench_overhead_cuda.json" > "$out/bench_overhead.txt" 2>&1
overhead_rc=$?
set -e
python - "$out" "$tests_rc" "$campaign_rc" "$overhead_rc" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
summary = {"pytest_rc": int(sys.argv[2]), "bench_campaign_rc": int(sys.argv[3]),
           "bench_overhead_rc": int(sys.argv[4])}
for name in ("bench_campaign_cuda.json", "bench_overhead_cuda.json"):
    p = out / name
    summary[name] = json.loads(p.read_text()) if p.exists() else None
for name in ("providers.txt", "gpu.csv", "pytest.txt"):
    p = out / name
    summary[name] = p.read_text()[-4000:] if p.exists() else None
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v for k, v in summary.items() if k.endswith("_rc")}))
PY
log "done: $out/gpu_check.json"
