"""Simultaneous policies on the same backbone: AlignAtt and two baselines, LocalAgreement-2 and wait-k.

Every policy sees the same greedy draft of the open sentence (`Translator.draft`, continuing the target
accepted so far, with where each token looks) and decides how much of it to write; only the decision differs:
- alignatt: the attention gate of `alignatt.policy.gate`, token by token, up to the first token it stops.
- local-agreement: LocalAgreement-2, the policy of the IWSLT simultaneous baseline (Polak et al. 2022,
  Machacek et al. 2023): write the longest common prefix, in whole target units, of this step's draft and the
  previous step's draft, both read as continuations of the same accepted prefix.
- wait-k (Ma et al. 2019) on source units: target unit i (counted from 0) of a sentence is written only
  once k + i source units of that sentence are accessible.
Committed sentences are finished by the cascade without any policy, as for AlignAtt.

The decisions are pure functions; the policy objects apply them to a `DraftResult` and keep what must
survive between steps in a `SentenceDecisions`, which the cascade holds per talk and renews per sentence. Every
policy applies the guards of `alignatt.policy.guards` once, to the units it would write (`writable_units`), and
reports the gate's verdicts on its draft, which the step log shows under every policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from alignatt.mt.translator import DraftResult, TokenStop
from alignatt.policy.gate import GateConfig, GateDecision, complete_units_text, gate_draft, judge_token
from alignatt.policy.guards import GuardOptions, cut_loop, ends_sentence
from alignatt.text_units import unit_spans

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


@dataclass(frozen=True)
class Decision:
    """What a policy writes from one draft, and the gate's verdicts on that draft."""

    text: str  # to append to the open sentence's accepted translation (may be empty)
    gate: GateDecision


class DraftPolicy(Protocol):
    def quota(self, n_accessible_units: int, state: SentenceDecisions) -> int | None:
        """The most units this step can write, known before drafting (None: no bound)."""

    def stop_rule(self, n_accessible_units: int) -> TokenStop | None:
        """The token after which nothing the draft goes on with can be written (None: draft to the end)."""

    def decide(self, result: DraftResult, translator: DraftReader, n_accessible_units: int,
               state: SentenceDecisions) -> Decision:
        """What to write from the draft; updates `state`."""


def may_end(result: DraftResult, guards: GuardOptions) -> bool:
    """Whether the draft's end completes its last unit (while the sentence is open, a guard says it does not)."""
    return result.ended and not guards.hold_draft_end


def _units_of(result: DraftResult, translator: DraftReader, guards: GuardOptions) -> DraftUnits:
    return draft_units(translator.continuation_text(result.prompt, result.draft_ids), may_end(result, guards),
                       translator.char_level)


def writable_units(draft: DraftUnits, n_units: int, guards: GuardOptions, prefix: str, char_level: bool) -> int:
    """At most `n_units` units of `draft` (which continues `prefix`), fewer where the guards stop the text: before
    a degenerate loop, and before sentence-final punctuation at its end."""
    loop_free = cut_loop(prefix, draft.prefix(n_units), char_level, guards.loop_repeats)
    n_units = min(n_units, len(unit_spans(loop_free, char_level)))
    while guards.hold_sentence_end and n_units > 0 and ends_sentence(draft.prefix(n_units)):
        n_units -= 1
    return n_units


def gated_units(result: DraftResult, translator: DraftReader, gate: GateDecision, guards: GuardOptions
                ) -> DraftUnits:
    """The whole units of the tokens the gate accepted: the last one counts when the token after it starts a new
    unit, or the draft ended there and may end."""
    prompt, ids, n = result.prompt, result.draft_ids, gate.n_accepted_tokens
    accepted = translator.continuation_text(prompt, ids[:n])
    if n < len(ids):
        continuation = translator.continuation_text(prompt, ids[:n + 1])[len(accepted):]
    else:
        continuation = "" if may_end(result, guards) else None
    text = complete_units_text(accepted, continuation, translator.char_level)
    return DraftUnits(text, tuple(unit_spans(text, translator.char_level)))


@dataclass(frozen=True)
class AlignAttPolicy:
    """The attention gate; optionally capped so that a sentence's target never runs more than `max_lead_units`
    units ahead of its accessible source (heads that point back at heard words for words the model made up would
    otherwise let a guess through)."""

    max_lead_units: int = -1
    guards: GuardOptions = GuardOptions()
    gate: GateConfig = GateConfig()

    def quota(self, n_accessible_units, state) -> int | None:
        if self.max_lead_units < 0:
            return None
        return max(0, n_accessible_units + self.max_lead_units - state.n_units_written)

    def stop_rule(self, n_accessible_units) -> TokenStop:
        return lambda alignment: not judge_token(alignment, n_accessible_units, self.gate).accepted

    def decide(self, result, translator, n_accessible_units, state) -> Decision:
        gate = gate_draft(result.alignments, n_accessible_units, self.gate)
        gated = gated_units(result, translator, gate, self.guards)
        budget = self.quota(n_accessible_units, state)
        n = len(gated.spans) if budget is None else min(len(gated.spans), budget)
        n = writable_units(gated, n, self.guards, result.prompt.target_prefix, translator.char_level)
        state.n_units_written += n
        return Decision(gated.prefix(n), gate)


@dataclass(frozen=True)
class LocalAgreementPolicy:
    """LocalAgreement-2: write what two consecutive drafts agree on."""

    guards: GuardOptions = GuardOptions()
    gate: GateConfig = GateConfig()

    def quota(self, n_accessible_units, state) -> int | None:
        return None  # every draft feeds the next agreement, whatever is written now

    def stop_rule(self, n_accessible_units) -> None:
        return None

    def decide(self, result, translator, n_accessible_units, state) -> Decision:
        draft = _units_of(result, translator, self.guards)
        units = draft.units
        n = writable_units(draft, agreed_units(state.previous_units, units), self.guards,
                           result.prompt.target_prefix, translator.char_level)
        state.previous_units = units[n:]  # the next draft continues after these n units
        state.n_units_written += n
        return Decision(draft.prefix(n), gate_draft(result.alignments, n_accessible_units, self.gate))


@dataclass(frozen=True)
class WaitKPolicy:
    """wait-k on source units, within the sentence."""

    k: int
    guards: GuardOptions = GuardOptions()
    gate: GateConfig = GateConfig()

    def quota(self, n_accessible_units, state) -> int | None:
        return wait_k_quota(n_accessible_units, self.k, state.n_units_written)

    def stop_rule(self, n_accessible_units) -> None:
        return None

    def decide(self, result, translator, n_accessible_units, state) -> Decision:
        draft = _units_of(result, translator, self.guards)
        n = min(len(draft.spans), self.quota(n_accessible_units, state))
        n = writable_units(draft, n, self.guards, result.prompt.target_prefix, translator.char_level)
        state.n_units_written += n
        return Decision(draft.prefix(n), gate_draft(result.alignments, n_accessible_units, self.gate))


def make_policy(selection: PolicySelection = PolicySelection(), guards: GuardOptions = GuardOptions(),
                gate: GateConfig = GateConfig()) -> DraftPolicy:
    if selection.policy == "local-agreement":
        return LocalAgreementPolicy(guards, gate)
    if selection.policy == "wait-k":
        return WaitKPolicy(selection.wait_k, guards, gate)
    return AlignAttPolicy(selection.max_lead_units, guards, gate)
