"""Prompt layout: the live source as an explicit span of the prompt, with token positions for every unit.

Order: system instruction | user turn = the source | assistant turn prefilled with the accepted target
(continue_final_message), so the draft only ever extends what was already written. Chat prompts are
rendered by the tokenizer's own chat template; base models without one use a plain few-shot layout.
Word <-> token maps come from the tokenizer's character offsets of the rendered prompt.
"""
from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from alignatt.text_units import is_char_level, unit_spans

LANGUAGE_NAMES = {"en": "English", "de": "German", "it": "Italian", "zh": "Chinese", "fr": "French",
                  "es": "Spanish", "ja": "Japanese", "nl": "Dutch", "pt": "Portuguese", "ru": "Russian"}

DEFAULT_SYSTEM_PROMPT = (
    "You are a professional simultaneous interpreter. Translate the {source} text given by the user into "
    "{target}. The text may stop mid-sentence. Reply with the {target} translation only.")

# Two placeholders with no character in common: whichever differs from the source at both ends is used
# to find where the template puts the user content.
_PLACEHOLDERS = ("\u2460", "\u2461")


def read_few_shot(path: str | Path | None) -> tuple[tuple[str, str], ...]:
    """(source, target) examples for plain prompts: JSONL lines with `src_ref` and `tgt_ref`.

    The agent and the head calibration both read them here, so the calibrated prompt is the runtime prompt.
    Whitespace is normalised as `PromptBuilder.render` normalises the live source and target.
    """
    if not path:
        return ()
    examples = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            source, target = record["src_ref"], record["tgt_ref"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: few-shot lines need string fields 'src_ref' and 'tgt_ref'") from err
        if not isinstance(source, str) or not isinstance(target, str):
            raise ValueError(f"{path}:{n}: 'src_ref' and 'tgt_ref' must be strings")
        examples.append((" ".join(source.split()), target.strip()))
    return tuple(examples)


@dataclass(frozen=True)
class PromptConfig:
    source_lang: str = field(default="en", metadata={"help": "source language code"})
    target_lang: str = field(default="de", metadata={"help": "target language code (de, it, zh, ...)"})
    style: str = field(default="chat", metadata={
        "help": "chat: the tokenizer's chat template (instruction-tuned models); "
                "plain: 'English: ... German: ...' few-shot text (base models)"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={
        "help": "system instruction; {source} and {target} become language names"})

    def __post_init__(self):
        if self.style not in ("chat", "plain"):
            raise ValueError(f"prompt style must be 'chat' or 'plain', got {self.style!r}")
        for code in (self.source_lang, self.target_lang):
            if code.split("-")[0].lower() not in LANGUAGE_NAMES:
                raise ValueError(f"unsupported language {code!r}: choose one of {', '.join(sorted(LANGUAGE_NAMES))}")

    def language_name(self, code: str) -> str:
        return LANGUAGE_NAMES.get(code.split("-")[0].lower(), code)

    def system_text(self) -> str:
        return self.system_prompt.format(source=self.language_name(self.source_lang),
                                         target=self.language_name(self.target_lang))


@dataclass(frozen=True)
class RenderedPrompt:
    """A tokenised prompt and where its source units sit.

    Token positions are absolute indices into `input_ids`; unit indices count source units left to right.
    """

    text: str
    input_ids: tuple[int, ...]
    source_char_span: tuple[int, int]
    unit_char_spans: tuple[tuple[int, int], ...]  # absolute character spans in `text`
    unit_token_spans: tuple[tuple[int, int], ...]  # [first, end) token positions of each unit
    source_token_positions: np.ndarray  # (S,) token positions inside the source span
    source_token_units: np.ndarray  # (S,) unit index of each of those tokens
    n_accessible_units: int
    target_prefix: str
    token_offsets: tuple[tuple[int, int], ...]  # character span of every token in `text`

    @property
    def target_char_span(self) -> tuple[int, int]:
        """Where the prefilled target sits: at the very end of the prompt."""
        return len(self.text) - len(self.target_prefix), len(self.text)

    @property
    def n_units(self) -> int:
        return len(self.unit_char_spans)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def source_accessible_mask(self) -> np.ndarray:
        """(S,) bool: the source token belongs to an accessible unit."""
        return self.source_token_units < self.n_accessible_units

    def unit_text(self, unit: int) -> str:
        start, end = self.unit_char_spans[unit]
        return self.text[start:end]


class PromptBuilder:
    """Renders prompts for one tokenizer, language pair and style."""

    def __init__(self, tokenizer, config: PromptConfig = PromptConfig(),
                 few_shot: Sequence[tuple[str, str]] = ()):
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("the prompt layout needs a fast tokenizer (character offsets)")
        if config.style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template: use PromptConfig(style='plain') for base models")
        self.tokenizer = tokenizer
        self.config = config
        self.few_shot = tuple(few_shot)

    def render(self, source: str, target_prefix: str = "", n_accessible_units: int | None = None,
               history: Sequence[tuple[str, str]] = ()) -> RenderedPrompt:
        """Lay out `source` (whitespace-normalised) with the accepted `target_prefix` prefilled.

        `history` holds earlier (source, translation) sentence pairs shown before the live source.
        `n_accessible_units` defaults to all units (a finished sentence).
        """
        source = " ".join(source.split())
        target_prefix = target_prefix.strip()
        if self.config.style == "chat":
            text, span = self._render_chat(source, target_prefix, history)
        else:
            text, span = self._render_plain(source, target_prefix, history)
        return self._tokenize(text, span, n_accessible_units, target_prefix)

    def _chat(self, messages: list[dict], **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False, **kwargs)

    def _messages(self, user_content: str, history: Sequence[tuple[str, str]]) -> list[dict]:
        messages = [{"role": "system", "content": self.config.system_text()}]
        for src, tgt in history:
            messages += [{"role": "user", "content": src}, {"role": "assistant", "content": tgt}]
        return messages + [{"role": "user", "content": user_content}]

    def _render_chat(self, source: str, target_prefix: str, history) -> tuple[str, tuple[int, int]]:
        with_source = self._chat(self._messages(source, history), add_generation_prompt=True)
        placeholder = next(p for p in _PLACEHOLDERS if not source or p not in (source[0], source[-1]))
        with_placeholder = self._chat(self._messages(placeholder, history), add_generation_prompt=True)
        start = len(os.path.commonprefix([with_source, with_placeholder]))
        suffix = len(os.path.commonprefix([with_source[::-1], with_placeholder[::-1]]))
        end = len(with_source) - suffix
        if with_source[start:end] != source:
            raise ValueError("the chat template does not render the user content verbatim; "
                             "cannot locate the source span")
        if not target_prefix:
            return with_source, (start, end)
        messages = self._messages(source, history) + [{"role": "assistant", "content": target_prefix}]
        text = self._chat(messages, continue_final_message=True)
        if text[:end] != with_source[:end] or not text.endswith(target_prefix):
            raise ValueError("the chat template renders the prefilled answer unexpectedly")
        return text, (start, end)

    def _plain_labels(self) -> tuple[str, str]:
        """The plain layout's source and target labels ("English:", "German:")."""
        return (f"{self.config.language_name(self.config.source_lang)}:",
                f"{self.config.language_name(self.config.target_lang)}:")

    def plain_end_markers(self) -> tuple[str, ...]:
        """What ends a translation in the plain layout: its line break, or a label that starts another example on
        the same line (a base model that copies English for a while can go on with "German: Hallo, ich bin ...",
        translating the talk's start again)."""
        return ("\n", *self._plain_labels())

    def _render_plain(self, source: str, target_prefix: str, history) -> tuple[str, tuple[int, int]]:
        src_label, tgt_label = self._plain_labels()
        shots = "".join(f"{src_label} {s}\n{tgt_label} {t}\n\n" for s, t in (*self.few_shot, *history))
        head = f"{shots}{src_label} "
        text = f"{head}{source}\n{tgt_label}" + (f" {target_prefix}" if target_prefix else "")
        return text, (len(head), len(head) + len(source))

    def _tokenize(self, text: str, span: tuple[int, int], n_accessible_units: int | None,
                  target_prefix: str) -> RenderedPrompt:
        encoding = self.tokenizer(text, add_special_tokens=self.config.style == "plain",
                                  return_offsets_mapping=True)
        source_units = unit_spans(text[span[0]:span[1]], is_char_level(self.config.source_lang))
        units = tuple((span[0] + a, span[0] + b) for a, b in source_units)
        n_accessible = len(units) if n_accessible_units is None else n_accessible_units
        if not 0 <= n_accessible <= len(units):
            raise ValueError(f"{n_accessible} accessible units, but the source has {len(units)}")
        positions, token_units = map_source_tokens(text, encoding["offset_mapping"], span, units)
        return RenderedPrompt(
            text=text, input_ids=tuple(encoding["input_ids"]), source_char_span=span, unit_char_spans=units,
            unit_token_spans=unit_token_spans(encoding["offset_mapping"], units),
            source_token_positions=positions, source_token_units=token_units,
            n_accessible_units=n_accessible, target_prefix=target_prefix,
            token_offsets=tuple(map(tuple, encoding["offset_mapping"])))


def map_source_tokens(text: str, offsets: Sequence[tuple[int, int]], span: tuple[int, int],
                      units: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token positions inside the source span and the unit each belongs to.

    A token belongs to the unit holding its first non-space character (a leading-space token such as
    " hello" belongs to "hello"); whitespace-only tokens belong to no unit and are left out.
    """
    starts = [u[0] for u in units]
    positions, token_units = [], []
    for position, (a, b) in enumerate(offsets):
        lo, hi = max(a, span[0]), min(b, span[1])
        piece = text[lo:hi]
        if lo >= hi or not piece.strip():
            continue
        first_char = lo + len(piece) - len(piece.lstrip())
        unit = bisect.bisect_right(starts, first_char) - 1
        if unit >= 0 and first_char < units[unit][1]:
            positions.append(position)
            token_units.append(unit)
    return np.asarray(positions, dtype=np.int64), np.asarray(token_units, dtype=np.int64)


def unit_token_spans(offsets: Sequence[tuple[int, int]], units: Sequence[tuple[int, int]]
                     ) -> tuple[tuple[int, int], ...]:
    """[first, end) positions of the tokens overlapping each unit's characters."""
    spans = []
    for start, end in units:
        overlapping = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        spans.append((overlapping[0], overlapping[-1] + 1))
    return tuple(spans)
