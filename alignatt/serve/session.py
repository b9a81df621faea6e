"""One client's session: the options it chose, its cascade built around the server's shared models, and the text
it was given so far, unit by unit, each with its emission time.

A session may override only what changes how one talk is translated, never what is loaded: the target language,
the preset, the policy and its k, and the latency unit of its metrics. Everything else is the server's flags.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Hashable, Protocol

from alignatt.accel.draft_reuse import DraftReuse
from alignatt.accel.screened_head import make_screen
from alignatt.factory import DEFAULT_PRESET, PRESETS, build_cascade, load_heads
from alignatt.mt.decoding import DecodeHooks, make_decoder
from alignatt.mt.heads import HeadsFileError
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.translator import TranslatorConfig
from alignatt.model_pool import ModelPool
from alignatt.options import dataclass_from_args
from alignatt.policy.policies import POLICIES
from alignatt.stream.cascade import Cascade
from alignatt.text_units import is_char_level, unit_separators

logger = logging.getLogger(__name__)

SERVED_LANGUAGES = ("de", "it", "zh")  # the task's directions, each served once its translator has heads for it
LATENCY_UNITS = ("word", "char")
# Punctuation that joins the unit before it when it arrives as a unit of its own ("Welt" "," -> "Welt,").
ATTACHING = (",", ".", ";", ":", "!", "?", ")")


class SessionError(ValueError):
    """A client asked for something this server does not serve; `code` is what the client is sent."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def default_latency_unit(target_lang: str) -> str:
    return "char" if is_char_level(target_lang) else "word"


@dataclass(frozen=True)
class SessionOptions:
    """What a client may choose for its session (JSON keys of its first messages)."""

    target_lang: str = "de"
    preset: str = DEFAULT_PRESET
    policy: str = "alignatt"
    wait_k: int = 3
    latency_unit: str = "word"  # how the metrics log splits the text: word, or char (zh)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise SessionError("bad_option", f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.policy not in POLICIES:
            raise SessionError("bad_option", f"unknown policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if not isinstance(self.wait_k, int) or isinstance(self.wait_k, bool) or self.wait_k < 1:
            raise SessionError("bad_option", f"wait_k must be a whole number >= 1, got {self.wait_k!r}")
        if self.latency_unit not in LATENCY_UNITS:
            raise SessionError("bad_option", f"latency_unit must be word or char, got {self.latency_unit!r}")


OVERRIDABLE = tuple(f.name for f in dataclasses.fields(SessionOptions))


def session_options(message: dict, defaults: SessionOptions, languages: tuple[str, ...]) -> SessionOptions:
    """`defaults` with the overrides one client message carries; SessionError for what is not served."""
    given = {key: message[key] for key in OVERRIDABLE if key in message}
    source = message.get("source_lang", "en")
    if source != "en":
        raise SessionError("bad_language", f"source language {source!r} is not served: the source is English (en)")
    target = given.get("target_lang", defaults.target_lang)
    if target not in languages:
        missing = [lang for lang in SERVED_LANGUAGES if lang not in languages]
        why = f" ({', '.join(missing)}: no alignment heads for this translator yet)" if missing else ""
        raise SessionError("bad_language", f"target language {target!r} is not served; choose one of "
                                           f"{', '.join(languages)}{why}")
    if "target_lang" in given and "latency_unit" not in given:
        given["latency_unit"] = default_latency_unit(target)
    return dataclasses.replace(defaults, **given)


def attaches(unit: str) -> bool:
    return unit[:1] in ATTACHING


def appended_text(units: list[str], char_level: bool, previous: str | None = None) -> str:
    """The text `units` add after the unit `previous` (None: nothing shown yet): `join_units`'s separators (a space
    between words; in Chinese only between two runs of Latin letters or digits), none before punctuation that
    attaches to the unit before it."""
    shown = [] if previous is None else [previous]
    separators = unit_separators(shown + units, char_level)[len(shown):]
    return "".join(("" if attaches(unit) else sep) + unit for sep, unit in zip(separators, units))


@dataclass(frozen=True)
class Emitted:
    """One written unit and when: audio the session had heard, and wall time since its first audio."""

    unit: str
    heard_s: float
    emitted_s: float


@dataclass
class Session:
    """One client's talk state: its options, its cascade (models shared, state its own) and what it was given."""

    id: str
    options: SessionOptions
    cascade: Cascade
    written: list[Emitted] = field(default_factory=list)  # the talk so far, append-only

    @property
    def char_level(self) -> bool:
        return is_char_level(self.options.target_lang)

    def write(self, units: list[str], heard_s: float, emitted_s: float) -> str:
        """Record units written now; return the text they add to what the client shows."""
        text = appended_text(units, self.char_level, self.written[-1].unit if self.written else None)
        self.written += [Emitted(unit, heard_s, emitted_s) for unit in units]
        return text

    def text(self) -> str:
        return appended_text([e.unit for e in self.written], self.char_level)

    def new_talk(self) -> None:
        """The client goes on with another talk on the same connection."""
        self.cascade.reset()
        self.written = []


class CascadeBuilder(Protocol):
    """What the scheduler builds sessions with: the languages served, the defaults, a cascade per session."""

    languages: tuple[str, ...]
    defaults: SessionOptions

    def build(self, options: SessionOptions) -> Cascade: ...


def _is_decoder_key(key: Hashable) -> bool:
    return isinstance(key, tuple) and bool(key) and key[0] == "decoder"


class SessionModels(ModelPool):
    """The server's pool as one session sees it: weights, ASR backend and LM-head screen shared, the translator's
    decoder its own. A decoder holds the prompt KV cache and the draft-reuse memory of the calls it served, so a
    shared one would make one talk's tokens depend, up to rounding, on the talks between its steps, and every
    session would lose its own cached prompt prefix at each turn."""

    def __init__(self, shared: ModelPool):
        super().__init__()
        self.shared = shared

    def __contains__(self, key: Hashable) -> bool:
        return super().__contains__(key) if _is_decoder_key(key) else key in self.shared

    def get(self, key: Hashable, load: Callable):
        if _is_decoder_key(key):
            return super().get(key, lambda: self._decoder(key))
        return self.shared.get(key, load)

    def _decoder(self, key: tuple):
        """The factory's decoder key is ("decoder", *backbone, heads, decode config, accel options): the same
        decoder `AccelOptions.decode_hooks` would give, around the shared screen (an int8 copy of the head)."""
        backbone, heads, decode_config, accel = key[1:-3], key[-3], key[-2], key[-1]
        model, _ = self.shared.get(("translator", *backbone), _not_loaded)
        mode = decode_config.resolved(model.device)
        screen = self.shared.get(("screen", *backbone, accel.lm_head, mode),
                                 lambda: make_screen(model, accel.lm_head, compiled=mode == "compiled"))
        draft_reuse = (DraftReuse(model, accel.draft_reuse_tokens, screen)
                       if accel.draft_reuse_tokens and mode == "static" else None)
        hooks = DecodeHooks(screen, draft_reuse) if screen is not None else DecodeHooks(draft_reuse=draft_reuse)
        return make_decoder(model, heads, decode_config, lambda _model, _mode: hooks)


def _not_loaded():
    raise RuntimeError("the translator is loaded before its decoder")


class FactoryBuilder:
    """Sessions from the server's engine flags with each session's overrides, all around one `ModelPool`.

    `language_flags(lang)` gives the flags a language other than the server's own needs (its heads file, its
    few-shot examples); it raises SessionError where the translator has none."""

    def __init__(self, args, models: ModelPool, language_flags: Callable[[str], dict]):
        self.args = args
        self.models = models
        self.language_flags = language_flags
        target = args.target_lang
        self.defaults = SessionOptions(target_lang=target, preset=args.preset or DEFAULT_PRESET, policy=args.policy,
                                       wait_k=args.wait_k, latency_unit=default_latency_unit(target))
        self.languages = tuple(lang for lang in SERVED_LANGUAGES if self._has_heads(lang))
        if target not in self.languages:
            raise SessionError("bad_language", f"the server's --target-lang {target!r} is not served "
                                               f"(served: {', '.join(SERVED_LANGUAGES)}, with alignment heads)")

    def session_args(self, options: SessionOptions) -> SimpleNamespace:
        values = dict(vars(self.args))
        if options.target_lang != self.args.target_lang:
            values.update(self.language_flags(options.target_lang))
        values.update(target_lang=options.target_lang, preset=options.preset, policy=options.policy,
                      wait_k=options.wait_k)
        return SimpleNamespace(**values)

    def _has_heads(self, lang: str) -> bool:
        try:
            args = self.session_args(dataclasses.replace(self.defaults, target_lang=lang))
            load_heads(args, dataclass_from_args(TranslatorConfig, args, prefix="mt-"),
                       dataclass_from_args(PromptConfig, args))
        except (SessionError, HeadsFileError, OSError):
            return False
        return True

    def build(self, options: SessionOptions) -> Cascade:
        return build_cascade(self.session_args(options), SessionModels(self.models))
