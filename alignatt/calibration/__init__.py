"""Offline head calibration: score every (layer, head) of a translator LLM for word alignment and write the
heads file the agent loads.

    python -m alignatt.calibration.select_heads --model MODEL --pairs pairs.jsonl --align-with eflomal \
        --source-lang en --target-lang de --out heads.json

Modules: `pairs` (parallel data and its units), `pharaoh` (word alignment files), `align` (built-in
aligner), `scoring` (teacher forcing through the agent's prompt layout, argmax hits per head),
`stability` (half-split checks), `outputs` (heads JSON, TSV, heatmap), `select_heads` (the command).
This package imports `alignatt`, never the reverse.
"""
