"""AlignAtt4LLM engine: simultaneous translation with attention-gated drafts of a decoder-only LLM.

This package knows nothing of SimulEval; `agents/` adapts it to the harness.
"""
