#!/usr/bin/env bash
# The prepared GPU run of the speed work (decode and chunk-step benchmarks), sized for one device call.
# Here first, once:  bash eval/gpu_checks.sh --prepare   (tokenizers + the transformers wheel to carry)
# Then on the device: run(command="bash eval/gpu_checks.sh", carry=["eval/offline_assets.tgz", "eval/wheels"])
# BENCH_ARGS=--tiny runs the same flow on CPU with scaled-down models (a dry run of this script).
# Results land in $OUT (the device's return folder) or eval/results/gpu; copy them to eval/results/.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  rm -rf eval/offline_assets && python3 -m eval.offline_tokenizers --out eval/offline_assets
  # Compressed: the carry limit is 64 MiB and the Gemma tokenizer alone is 32 MiB.
  tar czf eval/offline_assets.tgz -C eval offline_assets
  # The device image ships an older transformers (5.17 when last read): Gemma-4 and Qwen3-ASR need 5.23.
  python3 -m pip download --no-deps --dest eval/wheels "transformers==5.23.0"
  du -sh eval/offline_assets.tgz eval/wheels
  exit 0
fi

OUT=${OUT:-eval/results/gpu}
mkdir -p "$OUT"
[ -f eval/offline_assets.tgz ] && tar xzf eval/offline_assets.tgz -C eval
if ls eval/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-deps eval/wheels/*.whl
fi
export ALIGNATT_OFFLINE_TOKENIZERS="$PWD/eval/offline_assets" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  > "$OUT/versions.txt" 2>&1
# Separate time limits, so that one slow part still leaves the other's numbers.
timeout "${DECODE_S:-300}" python3 -m eval.bench_decode ${BENCH_ARGS:-} --out "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
echo "bench_decode exit $?" >> "$OUT/status.txt"
timeout "${CHUNK_S:-270}" python3 -m eval.bench_chunk ${BENCH_ARGS:-} --out "$OUT/bench_chunk.json" > "$OUT/bench_chunk.log" 2>&1
echo "bench_chunk exit $?" >> "$OUT/status.txt"
# Optional (FP32_S=seconds): the replay-vs-teacher-forced check in fp32, where only rounding should differ.
if [ -n "${FP32_S:-}" ]; then
  timeout "$FP32_S" python3 -m eval.bench_decode ${BENCH_ARGS:-} --dtype float32 --repeats 1 \
    --out "$OUT/bench_decode_fp32.json" > "$OUT/bench_decode_fp32.log" 2>&1
  echo "bench_decode fp32 exit $?" >> "$OUT/status.txt"
fi
cat "$OUT/versions.txt" "$OUT/status.txt"
tail -n 14 "$OUT/bench_decode.log" "$OUT/bench_chunk.log"
