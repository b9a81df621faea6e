"""Build a ready cascade from flat options (argparse flags or any namespace, e.g. SimulStream's YAML).

Every option is a field of one dataclass; flags are derived from the fields. Options missing from the
namespace keep their defaults, and `check_known` rejects keys no dataclass declares, so a typo in a YAML
configuration is an error instead of a silently ignored setting.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from types import SimpleNamespace

from alignatt.accel.gguf_cache import converted_checkpoint
from alignatt.accel.options import AccelOptions
from alignatt.asr.base import AsrBackend
from alignatt.asr.cache import CachedAsr
from alignatt.policy.policies import PolicySelection, make_policy
from alignatt.stream.cascade import Cascade, CascadeOptions
from alignatt.mt.decoding import DecodeConfig, Decoder, make_decoder
from alignatt.policy.guards import GuardOptions
from alignatt.mt.heads import HeadsFile, HeadsFileError, shipped_heads_path
from alignatt.model_pool import ModelPool
from alignatt.options import add_dataclass_arguments, dataclass_from_args
from alignatt.policy.gate import GateConfig
from alignatt.mt.alignment import AlignmentConfig
from alignatt.mt.prompt import PromptConfig, read_few_shot
from alignatt.stream.source import SourceOptions
from alignatt.stream.transcriber import TranscriberOptions
from alignatt.mt.loading import load_model_and_tokenizer
from alignatt.mt.translator import Translator, TranslatorConfig

logger = logging.getLogger(__name__)

# Gate operating points. "tuned": the preset's frontier and the option defaults of the guards.
# "published": the published system's effective behaviour: every transcribed word counts as heard,
# so only its guards act (trailing ASR punctuation stripped, the last word of a draft held back, unchanged
# drafts skipped, repeats trimmed); text may end in a full stop before the sentence is committed, a degenerate
# loop is written as the model writes it, and it drafts the whole open tail, even past a sentence end the ASR has
# not committed yet, finishing each committed sentence on its own.
GATES = {
    "tuned": {},
    "published": {"source_margin_ms": 0.0, "source_require_stable": False, "border_units": 1,
                  "hold_sentence_end": False, "loop_repeats": 0, "source_first_sentence_only": False,
                  "carry_committed": False},
}

# Operating points, one per IWSLT 2026 latency regime (LongYAAL CU: low 0-2 s, high 2-4 s): a step size and a gate,
# each the config with the best BLEU + chrF inside its regime on the proxy's tuning talks
# (results/curves/README.md). Every run has one (low unless --preset says otherwise); a flag given
# explicitly wins over its preset's value.
PRESETS = {
    # A word is heard once two hypotheses share it (aligned, so one rewritten word does not hold back the rest),
    # border 2; the whole open tail is drafted, and a sentence the text ran past is translated on with the next.
    "low": {"step_ms": 850.0, "source_require_stable": True, "source_margin_ms": 0.0, "border_units": 2,
            "stable_words": "aligned", "source_first_sentence_only": False, "carry_committed": True},
    # The same agreement, border 1; the open sentence ends at its first sentence end, later words wait for its
    # commit.
    "high": {"step_ms": 850.0, "source_require_stable": True, "source_margin_ms": 0.0, "border_units": 1,
             "stable_words": "aligned", "source_first_sentence_only": True, "carry_committed": False},
}
DEFAULT_PRESET = "low"
PRESET_KEYS = sorted({key for values in PRESETS.values() for key in values})
BACKENDS = ("qwen3", "whisper")  # ASR backends, built by `load_backend`


def _option_groups():
    """(dataclass, flag prefix) for every option group, ASR backends imported lazily."""
    from alignatt.asr.qwen3 import Qwen3AsrOptions
    from alignatt.asr.whisper import WhisperOptions

    return [(TranslatorConfig, "mt-"), (DecodeConfig, "mt-"), (AccelOptions, "mt-"), (PromptConfig, ""),
            (AlignmentConfig, ""), (GateConfig, ""), (GuardOptions, ""), (PolicySelection, ""), (CascadeOptions, ""),
            (TranscriberOptions, ""), (SourceOptions, "source-"), (Qwen3AsrOptions, "qwen3-"),
            (WhisperOptions, "whisper-")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    presets = "; ".join(f"{name}: {values}" for name, values in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help=f"operating point (default: {DEFAULT_PRESET}): low (LongYAAL 0-2 s) or high (2-4 s); "
                             f"sets the step and the gate ({presets}), flags given explicitly win")
    parser.add_argument("--gate", choices=sorted(GATES), default="tuned",
                        help="gate operating point: tuned (the defaults) or published (reproduces the published "
                             "system: no frontier, its guards only); overrides the frontier and guard flags")
    parser.add_argument("--heads", default=None,
                        help="heads JSON (default: the shipped file for --mt-model-id and the direction)")
    parser.add_argument("--asr-backend", choices=BACKENDS, default="qwen3", help="ASR backend")
    parser.add_argument("--asr-cache-dir", default=None,
                        help="answer repeated ASR windows from this folder (sweeps: the ASR side does not depend "
                             "on the policy); computation-aware latency still counts the recorded ASR time")
    parser.add_argument("--few-shot-file", default=None,
                        help="JSONL of {src_ref, tgt_ref} examples for --style plain prompts")
    by_preset = {key: "set by --preset" for key in PRESET_KEYS}  # None until then: not given explicitly
    for cls, prefix in _option_groups():
        add_dataclass_arguments(parser, cls, prefix, filled_later=by_preset)


def known_option_names() -> set[str]:
    names = {"preset", "gate", "heads", "asr_backend", "asr_cache_dir", "few_shot_file"}
    for cls, prefix in _option_groups():
        names |= {(prefix + f.name).replace("-", "_") for f in dataclasses.fields(cls)}
    return names


def check_known(options: dict) -> None:
    """Raise on keys that no option declares (for configuration files)."""
    unknown = sorted(set(options) - known_option_names())
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(unknown)}")


def load_heads(args, translator_config: TranslatorConfig, prompt_config: PromptConfig) -> HeadsFile:
    """The --heads file, or the shipped one; it must have been calibrated for the direction asked for."""
    direction = f"{prompt_config.source_lang}-{prompt_config.target_lang}"
    heads = HeadsFile.load(getattr(args, "heads", None) or shipped_heads_path(translator_config.model_id, direction))
    if heads.direction != direction:
        raise HeadsFileError(f"the heads file is for {heads.direction}, but the run translates {direction}")
    return heads


def with_preset(args):
    """`args` with its preset's values (default: low) for the options not given explicitly (None or absent);
    the options the preset does not set are left out, so they take their own defaults."""
    preset = getattr(args, "preset", None) or DEFAULT_PRESET
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    values = {k: v for k, v in vars(args).items() if not (k in PRESET_KEYS and v is None)}
    for key, value in PRESETS[preset].items():
        values.setdefault(key, value)
    values["preset"] = preset
    return SimpleNamespace(**values)


def with_gate(args):
    """`args` with the options of its --gate operating point filled in."""
    gate = getattr(args, "gate", None) or "tuned"
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}: choose one of {', '.join(sorted(GATES))}")
    return SimpleNamespace(**{**vars(args), **GATES[gate]})


def build_decoder(model, heads, decode_config: DecodeConfig, accel: AccelOptions = AccelOptions()) -> Decoder:
    """The translator's decoder, with the CPU speed-ups of `accel` (`alignatt.accel`) plugged in where they serve:
    the screened head where `make_screen` finds it pays (never on a GPU or a compiled decode step), draft reuse on
    the static path when asked for."""
    return make_decoder(model, heads, decode_config, accel.decode_hooks)


def _translator(args, models: ModelPool) -> tuple[Translator, bool]:
    """The translator named by `args` around the pool's weights and decoder; True when the decoder is new
    (and so not warmed up yet)."""
    config = dataclass_from_args(TranslatorConfig, args, prefix="mt-")
    prompt_config = dataclass_from_args(PromptConfig, args)
    decode_config = dataclass_from_args(DecodeConfig, args, prefix="mt-")
    accel = dataclass_from_args(AccelOptions, args, prefix="mt-")
    heads_file = load_heads(args, config, prompt_config)  # fail fast, before loading models
    model, tokenizer = models.get(("translator", *config.backbone_key()),
                                  lambda: load_model_and_tokenizer(config, resolve_checkpoint=converted_checkpoint))
    heads_file.check_fits(model.config, config.model_id, config.gguf_file)
    heads = heads_file.selected()
    decoder_key = ("decoder", *config.backbone_key(), heads, decode_config, accel)
    new_decoder = decoder_key not in models
    decoder = models.get(decoder_key, lambda: build_decoder(model, heads, decode_config, accel))
    translator = Translator(model, tokenizer, heads, prompt_config, config, dataclass_from_args(AlignmentConfig, args),
                            read_few_shot(getattr(args, "few_shot_file", None)), decode_config, heads_file.query_row,
                            decoder)
    return translator, new_decoder


def load_backend(name: str, options=None) -> AsrBackend:
    """Load an ASR backend by name ("qwen3" or "whisper") with its options dataclass (None: defaults); whisper with
    the torch encoder (`alignatt.accel.whisper_encoder`) plugged in, which it builds where its options ask for one.

    Imports happen here so that choosing one backend never requires the other's dependencies.
    """
    if name == "qwen3":
        from alignatt.asr.qwen3 import Qwen3AsrBackend, Qwen3AsrOptions

        return Qwen3AsrBackend.from_pretrained(options or Qwen3AsrOptions())
    if name == "whisper":
        from alignatt.accel.whisper_encoder import torch_whisper_encoder
        from alignatt.asr.whisper import WhisperBackend, WhisperOptions

        return WhisperBackend.from_options(options or WhisperOptions(), torch_encoder=torch_whisper_encoder)
    raise ValueError(f"unknown ASR backend {name!r}; choose one of {BACKENDS}")


def _asr_backend(args, models: ModelPool) -> tuple[AsrBackend, bool]:
    """The ASR backend named by `args` from the pool (True when newly loaded), behind the cache if asked."""
    from alignatt.asr.qwen3 import Qwen3AsrOptions
    from alignatt.asr.whisper import WhisperOptions

    name = getattr(args, "asr_backend", "qwen3")
    options = (dataclass_from_args(Qwen3AsrOptions, args, prefix="qwen3-") if name == "qwen3"
               else dataclass_from_args(WhisperOptions, args, prefix="whisper-"))
    key = ("asr", name, options)
    new = key not in models
    backend = models.get(key, lambda: load_backend(name, options))
    if getattr(args, "asr_cache_dir", None):
        # The backend's own identity where it has one: auto choices resolved, so a cache recorded where auto meant
        # one encoder is not replayed where it means another.
        backend = CachedAsr(backend, args.asr_cache_dir,
                            identity=getattr(backend, "cache_identity", f"{name}:{options!r}"))
    return backend, new


def build_cascade(args, models: ModelPool | None = None) -> Cascade:
    """Wire the cascade named by `args`. Models come from `models` (loaded there on first use), so cascades built
    with one pool share them; None loads them for this cascade alone."""
    models = models if models is not None else ModelPool()
    args = with_gate(with_preset(args))
    guards = dataclass_from_args(GuardOptions, args)
    policy = make_policy(dataclass_from_args(PolicySelection, args), guards,
                         dataclass_from_args(GateConfig, args))  # fails fast
    translator, new_decoder = _translator(args, models)
    backend, new_backend = _asr_backend(args, models)
    # Warm up only once every model exists: constructing a model of a new class invalidates compiled graphs.
    if new_decoder:
        translator.warm_up()
    if new_backend:
        backend.warm_up()
    return Cascade(backend, translator, dataclass_from_args(CascadeOptions, args),
                   dataclass_from_args(TranscriberOptions, args),
                   dataclass_from_args(SourceOptions, args, prefix="source-"), policy, guards)
