#!/usr/bin/env bash
# The prepared GPU run of the speed work (decode, chunk-step and batched-draft benchmarks), sized for one device call.
# Here first, once:  bash alignatt_eval/bench/gpu_checks.sh --prepare   (tokenizers + the transformers wheel to carry)
# Then on the device: run(command="bash alignatt_eval/bench/gpu_checks.sh", carry=["eval/offline_assets.tgz", "eval/wheels"])
# BENCH_ARGS=--tiny runs the same flow on CPU with scaled-down models (a dry run of this script).
# Results land in $OUT (the device's return folder) or results/gpu; copy them to results/.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root

if [ "${1:-}" = "--prepare" ]; then
  rm -rf eval/offline_assets && python3 -m alignatt_eval.runners.offline_tokenizers --out eval/offline_assets
  # Compressed: the carry limit is 64 MiB and the Gemma tokenizer alone is 32 MiB.
  tar czf eval/offline_assets.tgz -C eval offline_assets
  # The device image ships an older transformers (5.17 when last read): Gemma-4 and Qwen3-ASR need 5.23.
  python3 -m pip download --no-deps --dest eval/wheels "transformers==5.23.0"
  # transformers 5.23 needs regex>=2025.10.22 and the image's version was never read: carry one for its Python 3.12.
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --dest eval/wheels "regex==2025.11.3"
  du -sh eval/offline_assets.tgz eval/wheels
  exit 0
fi

OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
[ -f eval/offline_assets.tgz ] && tar xzf eval/offline_assets.tgz -C eval
if ls eval/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-deps eval/wheels/*.whl
fi
export ALIGNATT_OFFLINE_TOKENIZERS="$PWD/eval/offline_assets" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# At most 8 files come back from $OUT: machine facts go into status.txt.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/status.txt" 2>&1
python3 -c "import regex, torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'regex', regex.__version__)" >> "$OUT/status.txt" 2>&1
# Separate time limits, so that one slow part still leaves the other's numbers (each row is also logged as
# soon as it is measured, so a killed run keeps what it finished).
timeout "${DECODE_S:-250}" python3 -m alignatt_eval.bench.decode ${BENCH_ARGS:-} --out "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
echo "bench_decode exit $?" >> "$OUT/status.txt"
timeout "${CHUNK_S:-180}" python3 -m alignatt_eval.bench.chunk ${BENCH_ARGS:-} --out "$OUT/bench_chunk.json" > "$OUT/bench_chunk.log" 2>&1
echo "bench_chunk exit $?" >> "$OUT/status.txt"
timeout "${BATCH_S:-130}" python3 -m alignatt_eval.bench.batch_decode ${BENCH_ARGS:-} --sessions 1 2 4 8 \
  --out "$OUT/bench_batch.json" > "$OUT/bench_batch.log" 2>&1
echo "bench_batch exit $?" >> "$OUT/status.txt"
# Optional (FP32_S=seconds): the replay-vs-teacher-forced check in fp32, where only rounding should differ.
if [ -n "${FP32_S:-}" ]; then
  timeout "$FP32_S" python3 -m alignatt_eval.bench.decode ${BENCH_ARGS:-} --dtype float32 --repeats 1 \
    --out "$OUT/bench_decode_fp32.json" > "$OUT/bench_decode_fp32.log" 2>&1
  echo "bench_decode fp32 exit $?" >> "$OUT/status.txt"
fi
cat "$OUT/status.txt"
tail -n 14 "$OUT/bench_decode.log" "$OUT/bench_chunk.log" "$OUT/bench_batch.log"
