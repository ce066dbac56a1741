#!/usr/bin/env bash
# One command for a fresh GPU machine (torch, jax, transformers there; no keras,
# no keras-hub, no network): installs Keras and KerasHub from wheels brought
# with the tree, runs every row of benchmarks/table.py (jax and torch) and
# benchmarks/load_memory.py (Llama-2-7B shape, int8 and int4), then the memory
# plan on the GPU's own compiler (benchmarks/plan_7b.py: the 7B LoRA step of
# issue 26, and benchmarks/plan_accuracy.py --device: the plan against
# memory_stats()'s peak), and writes one markdown report.
#
#   benchmarks/gpu_check.sh prepare     # here, with a package registry: wheels into benchmarks/wheels/
#   benchmarks/gpu_check.sh             # there: install, run, write $OUT/gpu_check.md (or benchmarks/)
#   benchmarks/gpu_check.sh --dry-run   # here, on a CPU: the same steps at tiny shapes, no install
#
# The wheels folder ignores itself (benchmarks/wheels/.gitignore is "*"), so
# the device run carries it: carry=["benchmarks/wheels"]. TensorFlow is not
# carried (its wheel is larger than what a run may bring): the table's rows run
# on jax and torch, and the tensorflow cells are left out. Budget: table cells
# at most CELL_S seconds each (330 s in all) and the 7B load rows in the
# background at the same time (on the host's CPUs, JAX on CPU), then the plan
# rows (240 s): under 10 minutes together, one device call.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/benchmarks/wheels"
PY="${PYTHON:-python3}"
CELL_S="${CELL_S:-50}"
MODE="${1:-run}"

if [[ "$MODE" == "prepare" ]]; then
  mkdir -p "$WHEELS" && echo '*' > "$WHEELS/.gitignore"
  # Pure-Python wheels, and optree's for the device's Python 3.12.
  "$PY" -m pip download --no-deps -d "$WHEELS" keras==3.15.1 keras-hub==0.32.0 namex \
      kagglehub kagglesdk
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$WHEELS" optree
  # table.py's baseline scripts live beside the checkout (../shared/bench), which
  # does not travel: a copy goes with the wheels.
  mkdir -p "$WHEELS/baselines"
  cp "$ROOT"/../shared/bench/*.py "$WHEELS/baselines/" 2>/dev/null \
    || echo "no ../shared/bench: the table's baseline cells will say so"
  du -sh "$WHEELS"
  exit 0
fi

OUTDIR="${OUT:-$ROOT/benchmarks}"
REPORT="$OUTDIR/gpu_check.md"
cd "$ROOT"
if [[ "$MODE" == "--dry-run" ]]; then
  echo "dry run: no install; tiny shapes on this machine's CPU"
  TABLE_ARGS=(--tiny --backends jax torch)
  LOAD_ARGS=(--shape tinyllama --layers 2 --ways int8 int4)
  PLAN_ARGS=(--tiny)
  ACCURACY_ARGS=(--shapes gpt2_small --batches 1)
else
  ls "$WHEELS"/*.whl > /dev/null || { echo "no wheels in $WHEELS: run 'prepare' first"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  TABLE_ARGS=(--backends jax torch --timeout "$CELL_S" --baselines "$WHEELS/baselines")
  LOAD_ARGS=(--shape 7b --ways int8 int4 --timeout 200)
  PLAN_ARGS=()
  ACCURACY_ARGS=(--device --shapes gpt2_small llama_1b --batches 1 4)
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

# Host memory of loading (CPU, in the background), while the table uses the GPU.
JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" \
  timeout 470 "$PY" benchmarks/load_memory.py "${LOAD_ARGS[@]}" --cache /tmp/kt-bench-cache \
  > /tmp/gpu_check_load.txt 2>&1 &
LOAD_PID=$!
timeout 330 "$PY" benchmarks/table.py "${TABLE_ARGS[@]}" > /tmp/gpu_check_table.txt 2>&1 \
  || echo "table.py stopped: exit $?" >> /tmp/gpu_check_table.txt
wait "$LOAD_PID" || echo "load_memory.py stopped: exit $?" >> /tmp/gpu_check_load.txt
# The memory plan, compiled by the GPU's XLA (the device jax has).
KERAS_BACKEND=jax timeout 150 "$PY" benchmarks/plan_7b.py "${PLAN_ARGS[@]}" \
  > /tmp/gpu_check_plan.txt 2>&1 || echo "plan_7b.py stopped: exit $?" >> /tmp/gpu_check_plan.txt
KERAS_BACKEND=jax timeout 90 "$PY" benchmarks/plan_accuracy.py "${ACCURACY_ARGS[@]}" \
  > /tmp/gpu_check_accuracy.txt 2>&1 \
  || echo "plan_accuracy.py stopped: exit $?" >> /tmp/gpu_check_accuracy.txt

{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no GPU (nvidia-smi not found)"
  "$PY" - <<'EOF'
import importlib
for name in ("keras", "keras_hub", "jax", "torch", "transformers"):
    try:
        print(f"- {name} {importlib.import_module(name).__version__}")
    except Exception as e:  # the table says which cells could not run
        print(f"- {name}: not importable ({type(e).__name__})")
EOF
  echo
  echo "## benchmarks/table.py ${TABLE_ARGS[*]}"
  echo
  grep -E '^(device|versions|GPU)' /tmp/gpu_check_table.txt || true
  sed -n '/^| work/,/^[^|]/p' /tmp/gpu_check_table.txt | grep '^|' || tail -5 /tmp/gpu_check_table.txt
  echo
  echo "## benchmarks/load_memory.py ${LOAD_ARGS[*]} (host memory, JAX on CPU)"
  echo
  grep -E '^\||^preset' /tmp/gpu_check_load.txt || tail -5 /tmp/gpu_check_load.txt
  echo
  echo "## benchmarks/plan_7b.py ${PLAN_ARGS[*]} (device memory per step, the device's compiler)"
  echo
  grep -E '^\||^device|^shape' /tmp/gpu_check_plan.txt || tail -5 /tmp/gpu_check_plan.txt
  echo
  echo "## benchmarks/plan_accuracy.py ${ACCURACY_ARGS[*]}"
  echo
  grep -E '^\|' /tmp/gpu_check_accuracy.txt || tail -5 /tmp/gpu_check_accuracy.txt
} > "$REPORT"
cat "$REPORT"
