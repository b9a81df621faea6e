"""Units of text: the granularity at which source is made accessible and target is emitted.

Space-delimited languages use whitespace-separated words (punctuation stays attached to its word, as ASR
systems print it). Chinese and Japanese use one unit per CJK character, with runs of other non-space
characters (Latin names, numbers) kept together as one unit.
"""
from __future__ import annotations

import re

CHAR_LEVEL_LANGUAGES = frozenset({"zh", "ja"})

SENTENCE_FINAL = (".", "?", "!", "。", "？", "！")
CLOSERS = "\"'”’»)]}」』"  # closing quotes and brackets, looked through when a sentence end is sought
_ELLIPSES = ("...", "…")
NON_FINAL_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "e.g.", "i.e.", "no."})

# CJK ideographs, kana, and CJK/full-width punctuation each form a unit of their own.
_CJK_CHAR = (
    "\u3000-\u303f"  # CJK symbols and punctuation
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf"  # extension A
    "\u4e00-\u9fff"  # unified ideographs
    "\uf900-\ufaff"  # compatibility ideographs
    "\uff00-\uffef"  # half/full-width forms
)
_WORD_UNIT = re.compile(r"\S+")
_CJK_ONE = re.compile(rf"[{_CJK_CHAR}]")
_CHAR_UNIT = re.compile(rf"[{_CJK_CHAR}]|[^\s{_CJK_CHAR}]+")


def is_char_level(lang: str) -> bool:
    """True when `lang` (an ISO code such as 'zh' or 'zh-CN') is segmented per character."""
    return lang.split("-")[0].lower() in CHAR_LEVEL_LANGUAGES


def is_cjk_char(text: str) -> bool:
    """True for a single CJK character (a unit of its own in character-level languages)."""
    return _CJK_ONE.fullmatch(text) is not None


def unit_spans(text: str, char_level: bool = False) -> list[tuple[int, int]]:
    """Character spans [start, end) of every unit of `text`, left to right."""
    pattern = _CHAR_UNIT if char_level else _WORD_UNIT
    return [m.span() for m in pattern.finditer(text)]


def split_units(text: str, char_level: bool = False) -> list[str]:
    """The units of `text` as strings."""
    return [text[start:end] for start, end in unit_spans(text, char_level)]


def unit_separators(units: list[str], char_level: bool = False) -> list[str]:
    """What goes before each unit when units are joined: a space between words; in a character-level language
    nothing, except a space between two runs of other characters ("ACL 2023", "new method")."""
    if not char_level:
        return [""] + [" "] * (len(units) - 1)
    return [" " if i and not is_cjk_char(units[i - 1][-1:]) and not is_cjk_char(unit[:1]) else ""
            for i, unit in enumerate(units)]


def join_units(units: list[str], char_level: bool = False) -> str:
    """Inverse of `split_units` up to whitespace normalisation."""
    return "".join(sep + unit for sep, unit in zip(unit_separators(units, char_level), units))


def is_sentence_end(text: str) -> bool:
    """Whether a word ends a sentence (a trailing ellipsis or a title such as "Dr." does not)."""
    core = text.rstrip(CLOSERS)
    if core.endswith(_ELLIPSES) or core.casefold() in NON_FINAL_ABBREVIATIONS:
        return False
    return core.endswith(SENTENCE_FINAL)
