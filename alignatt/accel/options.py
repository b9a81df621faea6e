"""The options of the translator's CPU speed-ups, and the `DecodeAccel` hook `alignatt.factory` plugs into
`alignatt.mt.decoding.make_decoder` from them. Both keep the greedy tokens (draft reuse up to the rounding of a
pass over several positions)."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignatt.accel.draft_reuse import DraftReuse
from alignatt.accel.screened_head import LM_HEAD_MODES, make_screen
from alignatt.mt.decoding import DecodeHooks


@dataclass(frozen=True)
class AccelOptions:
    lm_head: str = field(default="auto", metadata={
        "help": "greedy decoding's LM head: auto (screened on CPU where its check passes and it pays), full (the "
                "fp32 head), screened (int8 screen + fp32 candidates; the same greedy tokens as full)"})
    draft_reuse_tokens: int = field(default=0, metadata={
        "help": "static path, not compiled: propose up to this many first tokens of each call from what "
                "followed the prompt's last words in earlier calls (draft reuse), and verify them with the prompt "
                "in one forward pass (0: off); the same greedy tokens, up to the rounding of a pass over several "
                "tokens"})

    def __post_init__(self):
        if self.lm_head not in LM_HEAD_MODES:
            raise ValueError(f"lm_head must be one of {LM_HEAD_MODES}, got {self.lm_head!r}")
        if self.draft_reuse_tokens < 0:
            raise ValueError(f"draft_reuse_tokens must be >= 0, got {self.draft_reuse_tokens}")

    def decode_hooks(self, model, mode: str) -> DecodeHooks:
        """The `DecodeAccel` hook: the screened head where `make_screen` finds it serves (not on a compiled decode
        step, nor on a GPU), and draft reuse on the static path when asked for."""
        screen = make_screen(model, self.lm_head, compiled=mode == "compiled")
        draft_reuse = (DraftReuse(model, self.draft_reuse_tokens, screen)
                       if self.draft_reuse_tokens and mode == "static" else None)
        return DecodeHooks(screen, draft_reuse) if screen is not None else DecodeHooks(draft_reuse=draft_reuse)
