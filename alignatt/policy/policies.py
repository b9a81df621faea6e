"""Simultaneous policies on the same backbone: AlignAtt and two baselines, LocalAgreement-2 and wait-k.

Every policy sees the same greedy draft of the open sentence (`Translator.draft`, continuing the target
accepted so far) and decides how much of it to write; only the decision differs:
- alignatt: the attention gate of `alignatt.policy.gate` (the draft's own `new_text`).
- local-agreement: LocalAgreement-2, the policy of the IWSLT simultaneous baseline (Polak et al. 2022,
  Machacek et al. 2023): write the longest common prefix, in whole target units, of this step's draft and the
  previous step's draft, both read as continuations of the same accepted prefix.
- wait-k (Ma et al. 2019) on source units: target unit i (counted from 0) of a sentence is written only
  once k + i source units of that sentence are accessible.
Committed sentences are finished by the cascade without any policy, as for AlignAtt.

The decisions are pure functions; the policy objects apply them to a `DraftResult` and keep what must
survive between steps in a `SentenceDecisions`, which the cascade holds per talk and renews per sentence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from alignatt.policy.guards import GuardOptions, cut_loop, ends_sentence
from alignatt.policy.gate import complete_units_text
from alignatt.text_units import unit_spans
from alignatt.mt.translator import DraftResult

POLICIES = ("alignatt", "local-agreement", "wait-k")


@dataclass(frozen=True)
class PolicySelection:
    policy: str = field(default="alignatt", metadata={
        "help": "simultaneous policy on the draft: alignatt (attention gate), local-agreement "
                "(LocalAgreement-2 on target prefixes, the IWSLT baseline's policy) or wait-k (on source units)"})
    wait_k: int = field(default=3, metadata={
        "help": "wait-k only: target unit i (from 0) of a sentence is written once k + i of its source units "
                "are accessible"})
    max_lead_units: int = field(default=-1, metadata={
        "help": "alignatt only: a sentence's written target units never exceed its accessible source units by more "
                "than this (the gate then only vetoes within that budget); -1: no cap"})

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.wait_k < 1:
            raise ValueError(f"wait_k must be >= 1, got {self.wait_k}")
        if self.max_lead_units < -1:
            raise ValueError(f"max_lead_units must be >= 0 (or -1: no cap), got {self.max_lead_units}")

    @property
    def label(self) -> str:
        """Short name for result tables: alignatt, local-agreement, wait-k3."""
        return f"wait-k{self.wait_k}" if self.policy == "wait-k" else self.policy


@dataclass
class SentenceDecisions:
    """What a policy carries from one step to the next within the open sentence."""

    previous_units: tuple[str, ...] | None = None  # LocalAgreement: last draft's units after the accepted prefix
    n_units_written: int = 0  # target units written for this sentence by drafting steps


# --- pure decisions ---------------------------------------------------------------------------------------

def agreed_units(previous: Sequence[str] | None, current: Sequence[str]) -> int:
    """LocalAgreement-2: length of the longest common prefix of two drafts (0 without a previous draft)."""
    if previous is None:
        return 0
    n = 0
    for before, now in zip(previous, current):
        if before != now:
            break
        n += 1
    return n


def wait_k_quota(n_accessible_units: int, k: int, n_units_written: int) -> int:
    """How many more target units wait-k allows: unit i needs k + i accessible source units."""
    return max(0, n_accessible_units - k + 1 - n_units_written)


@dataclass(frozen=True)
class DraftUnits:
    """A draft as text cut to complete target units, with the span of every unit."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(self.text[a:b] for a, b in self.spans)

    def prefix(self, n_units: int) -> str:
        """Text of the first `n_units` units, leading whitespace kept (it separates them from the prefix)."""
        return self.text[: self.spans[n_units - 1][1]] if n_units > 0 else ""


def draft_units(draft_text: str, ended: bool, char_level: bool) -> DraftUnits:
    """The complete units of a draft: its last unit counts only if the draft ended (EOS) after it."""
    text = complete_units_text(draft_text, "" if ended else None, char_level)
    return DraftUnits(text, tuple(unit_spans(text, char_level)))


# --- policy objects ---------------------------------------------------------------------------------------

class DraftReader(Protocol):
    """The part of the Translator a policy needs."""

    char_level: bool

    def continuation_text(self, prompt, token_ids: Sequence[int]) -> str: ...


class DraftPolicy(Protocol):
    # What the policy writes depends on the draft only up to the first token the gate stops.
    until_rejected: bool

    def quota(self, n_accessible_units: int, state: SentenceDecisions) -> int | None:
        """The most units this step can write, known before drafting (None: no bound)."""

    def accept(self, result: DraftResult, translator: DraftReader, n_accessible_units: int,
               state: SentenceDecisions) -> str:
        """Text to append to the open sentence's accepted translation (may be empty)."""


def _units_of(result: DraftResult, translator: DraftReader) -> DraftUnits:
    return draft_units(translator.continuation_text(result.prompt, result.draft_ids), result.may_end,
                       translator.char_level)


def writable_units(draft: DraftUnits, n_units: int, guards: GuardOptions, prefix: str, char_level: bool) -> int:
    """At most `n_units` units of `draft` (which continues `prefix`), fewer where the guards of `alignatt.policy.guards`
    stop the text: before a degenerate loop, and before sentence-final punctuation at its end. They apply here
    as the AlignAtt translator applies them to its own accepted text."""
    loop_free = cut_loop(prefix, draft.prefix(n_units), char_level, guards.loop_repeats)
    n_units = min(n_units, len(unit_spans(loop_free, char_level)))
    while guards.hold_sentence_end and n_units > 0 and ends_sentence(draft.prefix(n_units)):
        n_units -= 1
    return n_units


@dataclass(frozen=True)
class AlignAttPolicy:
    """The attention gate, already applied by the translator; optionally capped so that a sentence's target never
    runs more than `max_lead_units` units ahead of its accessible source (heads that point back at heard words
    for words the model made up would otherwise let a guess through)."""

    max_lead_units: int = -1
    guards: GuardOptions = GuardOptions()
    until_rejected = True

    def quota(self, n_accessible_units, state) -> int | None:
        if self.max_lead_units < 0:
            return None
        return max(0, n_accessible_units + self.max_lead_units - state.n_units_written)

    def accept(self, result, translator, n_accessible_units, state) -> str:
        gated = DraftUnits(result.new_text, tuple(unit_spans(result.new_text, translator.char_level)))
        n = len(gated.spans)
        budget = self.quota(n_accessible_units, state)
        if budget is not None:
            n = writable_units(gated, min(n, budget), self.guards, result.prompt.target_prefix,
                               translator.char_level)
        state.n_units_written += n
        return gated.prefix(n)


@dataclass(frozen=True)
class LocalAgreementPolicy:
    """LocalAgreement-2: write what two consecutive drafts agree on."""

    guards: GuardOptions = GuardOptions()
    until_rejected = False

    def quota(self, n_accessible_units, state) -> int | None:
        return None  # every draft feeds the next agreement, whatever is written now

    def accept(self, result, translator, n_accessible_units, state) -> str:
        draft = _units_of(result, translator)
        units = draft.units
        n = writable_units(draft, agreed_units(state.previous_units, units), self.guards,
                           result.prompt.target_prefix, translator.char_level)
        state.previous_units = units[n:]  # the next draft continues after these n units
        state.n_units_written += n
        return draft.prefix(n)


@dataclass(frozen=True)
class WaitKPolicy:
    """wait-k on source units, within the sentence."""

    k: int
    guards: GuardOptions = GuardOptions()
    until_rejected = False

    def quota(self, n_accessible_units, state) -> int | None:
        return wait_k_quota(n_accessible_units, self.k, state.n_units_written)

    def accept(self, result, translator, n_accessible_units, state) -> str:
        draft = _units_of(result, translator)
        n = min(len(draft.spans), self.quota(n_accessible_units, state))
        n = writable_units(draft, n, self.guards, result.prompt.target_prefix, translator.char_level)
        state.n_units_written += n
        return draft.prefix(n)


def make_policy(selection: PolicySelection = PolicySelection(), guards: GuardOptions = GuardOptions()
                ) -> DraftPolicy:
    if selection.policy == "local-agreement":
        return LocalAgreementPolicy(guards)
    if selection.policy == "wait-k":
        return WaitKPolicy(selection.wait_k, guards)
    return AlignAttPolicy(selection.max_lead_units, guards)
