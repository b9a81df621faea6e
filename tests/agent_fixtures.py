"""Tiny checkpoints on disk (ASR, aligner, translator, heads) for running the agent through real CLIs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from alignatt.mt.heads import HeadsFile, HeadScore
from alignatt_eval.runners.offline_tokenizers import gemma_tokenizer
from tiny_asr import build_tiny_asr
from tiny_models import build_gemma4_conditional

SPEECH_DIR = Path(__file__).resolve().parents[1] / "data" / "speech"
DEMO_SPEECH_DIR = Path(__file__).resolve().parents[1] / "alignatt" / "assets" / "speech"  # the demo talk
HEADS = ((2, 0), (5, 1), (1, 3), (4, 2))


@dataclass(frozen=True)
class TinyCheckpoints:
    asr: str
    aligner: str
    translator: str
    heads: str

    def agent_flags(self) -> list[str]:
        return ["--qwen3-asr-model", self.asr, "--qwen3-aligner-model", self.aligner, "--qwen3-max-new-tokens", "12",
                "--mt-model-id", self.translator, "--mt-device", "cpu", "--heads", self.heads]


def save_tiny_checkpoints(root: Path) -> TinyCheckpoints:
    asr, aligner, processor = build_tiny_asr()
    for name, model in (("asr", asr), ("aligner", aligner)):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    tokenizer = gemma_tokenizer(chat=True)
    translator = build_gemma4_conditional(vocab_size=len(tokenizer))
    translator.save_pretrained(root / "mt")
    tokenizer.save_pretrained(root / "mt")
    text = translator.config.get_text_config()
    HeadsFile(model_id="tiny-gemma4", direction="en-de", heads=tuple(HeadScore(l, h, 0.5) for l, h in HEADS),
              num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads
              ).save(root / "heads.json")
    return TinyCheckpoints(str(root / "asr"), str(root / "aligner"), str(root / "mt"), str(root / "heads.json"))


def write_instance_lists(root: Path, wavs: list[Path], references: list[str]) -> tuple[str, str]:
    """SimulEval's --source (one wav path per line) and --target (one reference per line) files."""
    (root / "source.txt").write_text("".join(f"{w}\n" for w in wavs))
    (root / "target.txt").write_text("".join(f"{r}\n" for r in references))
    return str(root / "source.txt"), str(root / "target.txt")


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> Path:
    soundfile.write(path, samples, rate_hz)
    return path
