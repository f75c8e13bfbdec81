# Every GPU check in one call, for a machine lent for a few minutes: the GPU check, the command line at
# 1B, the CUDA tests, then the whole suite but Flower on a CUDA machine; logs and JSON under $OUT.
#
#   OUT=runs/gpu BUDGET=545 bash benchmarks/gpu_all.sh
#
# On a bare machine (torch, transformers, peft, accelerate; no network, no model wheels) carry .whl/ (wheels of
# what it lacks, installed into /tmp/site first) and .gpudata/ (SmolLM2's tokenizer and the headline task as a
# file), which `bash benchmarks/gpu_prepare.sh` builds here from the checkout's .venv.
# With prelort installed (make setup, a CUDA torch) neither is needed.
set -u
T0=$SECONDS
END=$((T0 + ${BUDGET:-550}))
left() { echo $((END - SECONDS)); }
: "${OUT:?set OUT to a folder for the logs}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
export PRELORT_CACHE=${PRELORT_CACHE:-/tmp/prelort-cache}
PY=${PY:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3
  export PYTHONPATH=src:.:/tmp/site
else
  export PYTHONPATH=src:.
fi
CLI_DATA=()
[ -d .gpudata/tokenizer ] && CLI_DATA=(--tokenizer .gpudata/tokenizer --task .gpudata/bbc-headlines.jsonl)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2
  $PY -c "import sys, torch, transformers, peft; print(sys.version); print(torch.__version__, torch.version.cuda, transformers.__version__, peft.__version__); print(torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== GPU check ($(left) s left)"
timeout 220 $PY -m benchmarks.gpu --out "$OUT" > "$OUT/gpu.log" 2>&1; echo "gpu rc=$?"
grep -v "^\s*$" "$OUT/gpu.log" | tail -40

echo "== the command line at 1B ($(left) s left)"
timeout 190 $PY -m benchmarks.gpu_cli "${CLI_DATA[@]}" --out "$OUT" > "$OUT/gpu_cli.log" 2>&1; echo "cli rc=$?"
grep -v "^INFO\|^\s*$\|^|" "$OUT/gpu_cli.log" | tail -25

echo "== CUDA tests ($(left) s left)"
limit=$(left); [ "$limit" -gt 70 ] && limit=70
timeout "$limit" $PY -m pytest -q -p no:cacheprovider -rs tests/training/test_placement.py \
  tests/test_device.py tests/test_gpu_check.py > "$OUT/pytest_cuda.log" 2>&1; echo "cuda tests rc=$?"
tail -15 "$OUT/pytest_cuda.log"

echo "== the suite but Flower, on a CUDA machine ($(left) s left)"
timeout $(( $(left) - 5 )) $PY -m pytest -q -p no:cacheprovider -n 14 --continue-on-collection-errors \
  --ignore=tests/flower tests > "$OUT/pytest_all.log" 2>&1; echo "suite rc=$?"
grep -E "passed|failed|error" "$OUT/pytest_all.log" | tail -5
grep -E "^(FAILED|ERROR)" "$OUT/pytest_all.log" | head -60
echo "total $((SECONDS - T0)) s"
