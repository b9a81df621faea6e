"""Baseline policies (LocalAgreement-2, wait-k): pure decisions on scripted drafts, then inside the cascade."""
import argparse
from types import SimpleNamespace

import pytest

from alignatt.factory import DEFAULT_PRESET, PRESETS, add_arguments, check_known, with_gate, with_preset
from alignatt.mt.alignment import TokenAlignment
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.translator import DraftResult, Translator, TranslatorConfig
from alignatt.options import dataclass_from_args
from alignatt.policy.gate import GateConfig
from alignatt.policy.guards import GuardOptions
from alignatt.policy.policies import (AlignAttPolicy, Decision, LocalAgreementPolicy, PolicySelection,
                                      SentenceDecisions, WaitKPolicy, agreed_units, draft_units, make_policy,
                                      wait_k_quota)
from alignatt.stream.cascade import Cascade, CascadeOptions
from alignatt.stream.source import SourceOptions
from alignatt.stream.transcriber import TranscriberOptions
from alignatt.text_units import split_units
from test_cascade import HEADS, TALK, TimelineAsr, feed, timeline
from tiny_models import build_gemma4_conditional


# --- pure decisions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("previous, current, expected", [
    (None, ["Wir", "schlagen"], 0),  # first draft of a sentence: nothing to agree with
    ([], ["Wir"], 0),
    (["Wir", "schlagen", "eine"], ["Wir", "schlagen", "ein"], 2),
    (["Wir", "schlagen"], ["Wir", "schlagen", "eine", "neue"], 2),
    (["Wir", "schlagen", "eine"], ["Wir"], 1),
    (["Sie"], ["Wir", "schlagen"], 0),
])
def test_local_agreement_is_the_longest_common_prefix(previous, current, expected):
    assert agreed_units(previous, current) == expected


@pytest.mark.parametrize("accessible, k, written, expected", [
    (0, 3, 0, 0), (2, 3, 0, 0), (3, 3, 0, 1), (5, 3, 0, 3), (5, 3, 2, 1), (5, 3, 3, 0), (5, 3, 7, 0), (1, 1, 0, 1),
])
def test_wait_k_quota(accessible, k, written, expected):
    assert wait_k_quota(accessible, k, written) == expected


def test_wait_k_never_writes_unit_i_before_k_plus_i_source_units():
    for k in (1, 2, 4):
        written = 0
        for accessible in range(0, 12):
            written += wait_k_quota(accessible, k, written)
            assert written == max(0, accessible - k + 1)  # units 0..written-1 all have k + i <= accessible


def test_draft_units_keep_only_complete_units():
    assert draft_units(" schlagen eine ne", ended=False, char_level=False).units == ("schlagen", "eine")
    assert draft_units(" schlagen eine neue", ended=True, char_level=False).units == ("schlagen", "eine", "neue")
    assert draft_units(" schlagen eine ", ended=False, char_level=False).units == ("schlagen", "eine")
    cut = draft_units(" schlagen eine ne", ended=False, char_level=False)
    assert cut.prefix(1) == " schlagen" and cut.prefix(0) == ""  # leading space kept: it separates the prefix
    assert draft_units("我们提出", ended=False, char_level=True).units == ("我", "们", "提", "出")
    assert draft_units("我们用GP", ended=False, char_level=True).units == ("我", "们", "用")  # "GP" may go on


class CharTranslator:
    """Token ids are code points: enough of a Translator for a policy to read a draft."""

    char_level = False

    def continuation_text(self, prompt, token_ids):
        return "".join(map(chr, token_ids))


HEARD = TokenAlignment((0,), 0.0, 0.0)  # looks at the first source unit: heard whatever the frontier
UNHEARD = TokenAlignment((99,), 99.0, 1.0)  # looks far past any frontier


def scripted(text: str, ended: bool = False, gated: str = "", prefix: str = "") -> DraftResult:
    """A draft of `text` (one token per character) continuing the accepted `prefix`, whose heads look at heard
    source for the characters of `gated` (a prefix of `text`) and past the frontier for the next one."""
    assert text.startswith(gated)
    alignments = (HEARD,) * len(gated) + ((UNHEARD,) if len(gated) < len(text) else ())
    prompt = SimpleNamespace(target_prefix=prefix, n_units=1, n_accessible_units=0, unit_text=lambda unit: "?")
    return DraftResult(prompt, tuple(map(ord, text)), ended, None, alignments)


# A draft's end completes its last unit only with the hold_draft_end guard off.
ENDS_FREELY = GuardOptions(hold_draft_end=False)


def test_local_agreement_on_scripted_drafts():
    policy, state, reader = LocalAgreementPolicy(ENDS_FREELY), SentenceDecisions(), CharTranslator()
    assert policy.decide(scripted("Wir schlagen ein"), reader, 2, state).text == ""  # no previous draft yet
    assert state.previous_units == ("Wir", "schlagen")  # "ein" may still grow: not a complete unit
    assert policy.decide(scripted("Wir schlagen eine neue Meth"), reader, 4, state).text == "Wir schlagen"
    # The next draft continues after "Wir schlagen": compared with what the last one had after it.
    assert state.previous_units == ("eine", "neue")
    assert policy.decide(scripted(" eine neue Methode vor", ended=True), reader, 6, state).text == " eine neue"
    assert state.previous_units == ("Methode", "vor") and state.n_units_written == 4
    assert policy.decide(scripted(" Methoden", ended=True), reader, 6, state).text == ""
    assert policy.decide(scripted(" Methoden vor", ended=True), reader, 7, state).text == " Methoden"


def test_wait_k_on_scripted_drafts():
    policy, state, reader = WaitKPolicy(2, ENDS_FREELY), SentenceDecisions(), CharTranslator()
    assert policy.decide(scripted("Wir schlagen eine neue"), reader, 1, state).text == ""
    assert policy.decide(scripted("Wir schlagen eine neue"), reader, 2, state).text == "Wir"
    assert policy.decide(scripted(" schlagen eine neue Methode"), reader, 5, state).text == " schlagen eine neue"
    assert state.n_units_written == 4
    assert policy.decide(scripted(" Methode vor"), reader, 9, state).text == " Methode"  # "vor" may be cut short
    assert policy.decide(scripted(" vor", ended=True), reader, 9, state).text == " vor"


def test_the_draft_end_guard_holds_the_last_unit_of_an_ended_draft():
    reader = CharTranslator()
    assert LocalAgreementPolicy().decide(scripted(" vor", ended=True), reader, 9,
                                         SentenceDecisions(previous_units=("vor",))).text == ""
    assert LocalAgreementPolicy(ENDS_FREELY).decide(scripted(" vor", ended=True), reader, 9,
                                                    SentenceDecisions(previous_units=("vor",))).text == " vor"
    assert AlignAttPolicy().decide(scripted(" vor", ended=True, gated=" vor"), reader, 9, SentenceDecisions()).text == ""
    assert AlignAttPolicy(guards=ENDS_FREELY).decide(scripted(" vor", ended=True, gated=" vor"), reader, 9,
                                                    SentenceDecisions()).text == " vor"


def test_alignatt_policy_writes_the_whole_units_the_gate_accepted():
    assert AlignAttPolicy().decide(scripted("Wir schlagen", gated="Wir"), CharTranslator(), 1,
                                   SentenceDecisions()).text == "Wir"


def test_alignatt_lead_cap_only_vetoes_within_the_frontier_budget():
    policy, state, reader = AlignAttPolicy(max_lead_units=0), SentenceDecisions(), CharTranslator()
    gated = "Wir schlagen eine neue"  # the gate lets it all through; "neue" may still grow
    assert policy.decide(scripted(gated, gated=gated), reader, 0, state).text == ""  # nothing heard yet
    assert policy.decide(scripted(gated, gated=gated), reader, 2, state).text == "Wir schlagen"
    assert state.n_units_written == 2
    # The budget never adds text the gate stopped: 5 accessible units, but the gate passed one unit only.
    assert policy.decide(scripted(" eine neue", gated=" eine"), reader, 5, state).text == " eine"
    assert AlignAttPolicy(max_lead_units=1).decide(scripted(gated, gated=gated), reader, 2,
                                                   SentenceDecisions()).text == "Wir schlagen eine"
    # Cut inside the text, the cap still never leaves a sentence end behind.
    assert AlignAttPolicy(max_lead_units=0).decide(scripted("Ja. Wir", gated="Ja. Wir"), reader, 1,
                                                   SentenceDecisions()).text == ""
    with pytest.raises(ValueError, match="max_lead_units"):
        PolicySelection("alignatt", max_lead_units=-2)
    assert make_policy(PolicySelection(max_lead_units=1)) == AlignAttPolicy(1)


# --- options ----------------------------------------------------------------------------------------------

def test_policy_flags_and_config_keys():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--policy", "wait-k", "--wait-k", "5"])
    assert isinstance(make_policy(PolicySelection(args.policy, args.wait_k)), WaitKPolicy)
    assert parser.parse_args([]).policy == "alignatt"
    check_known({"policy": "local-agreement", "wait_k": 2})
    with pytest.raises(ValueError, match="unknown policy"):
        PolicySelection("wait-3")
    with pytest.raises(ValueError):
        PolicySelection("wait-k", 0)
    assert PolicySelection("wait-k", 4).label == "wait-k4" and PolicySelection().label == "alignatt"


# --- in the cascade, on a scripted ASR timeline --------------------------------------------------------------

class OracleTranslator:
    """Translates word by word (upper case) and drafts a guess beyond the source that changes every step."""

    char_level = False

    def __init__(self):
        self.n_steps = 0

    @staticmethod
    def token_text(token_id):
        return chr(token_id)

    @staticmethod
    def translation(source):
        return source.upper().split()

    def continuation_text(self, prompt, token_ids):
        return "".join(map(chr, token_ids))

    def _rest(self, words, target_prefix):
        written = target_prefix.split()
        assert words[: len(written)] == written, "a draft always continues the accepted prefix"
        return (" " if written else "") + " ".join(words[len(written):])

    def draft(self, source, n_accessible_units, target_prefix="", history=(), stop_at=None, max_units=None):
        self.n_steps += 1
        words = self.translation(source)
        text = self._rest(words + [f"GUESS{self.n_steps}", "MORE"], target_prefix)
        gated = self._rest(words[:n_accessible_units], target_prefix) if n_accessible_units > len(
            target_prefix.split()) else ""
        return scripted(text, gated=gated)

    def finish(self, source, target_prefix="", history=(), must_continue=False, stop_text=None):
        return self._rest(self.translation(source), target_prefix)


# The oracle's guesses change from step to step, unlike greedy decoding: a repeated input must be drafted again.
ORACLE_GUARDS = GuardOptions(skip_unchanged_drafts=False)


class Recording:
    """Wraps a policy; records every decision: (accessible units, draft units, accepted units, sentence state)."""

    def __init__(self, policy):
        self.policy = policy
        self.steps = []

    def quota(self, n_accessible_units, state):
        return self.policy.quota(n_accessible_units, state)

    def stop_rule(self, n_accessible_units):
        return self.policy.stop_rule(n_accessible_units)

    def decide(self, result, translator, n_accessible_units, state) -> Decision:
        units = draft_units(translator.continuation_text(result.prompt, result.draft_ids), result.ended,
                            False).units
        decision = self.policy.decide(result, translator, n_accessible_units, state)
        self.steps.append((n_accessible_units, units, tuple(split_units(decision.text)), state))
        return decision


def run_talk(policy, translator, seconds=8.0, guards=GuardOptions()):
    recording = Recording(policy)
    cascade = Cascade(TimelineAsr(timeline(TALK)), translator, CascadeOptions(step_ms=500, min_audio_s=1.0),
                      policy=recording, guards=guards)
    units = [u for out in feed(cascade, seconds) for u in out] + cascade.finish()
    return units, recording.steps


def per_sentence(steps):
    """Each step with the number of units its sentence had written before it (counted here, not by the policy)."""
    written, state_before = 0, None
    for accessible, units, accepted, state in steps:
        if state is not state_before:  # the cascade gives every sentence a fresh state
            written, state_before = 0, state
        yield accessible, written, units, accepted, state
        written += len(accepted)


@pytest.mark.parametrize("policy", [AlignAttPolicy(), LocalAgreementPolicy(), WaitKPolicy(1), WaitKPolicy(3)],
                         ids=["alignatt", "local-agreement", "wait-k1", "wait-k3"])
def test_every_policy_writes_the_whole_translation_once(policy):
    units, steps = run_talk(policy, OracleTranslator(), guards=ORACLE_GUARDS)
    assert units == OracleTranslator.translation(TALK)  # append-only, nothing lost, no guess ever written
    assert len({id(state) for *_, state in steps}) >= 2, "several sentences were drafted, each with its own state"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_wait_k_in_the_cascade_respects_the_lag(k):
    _, steps = run_talk(WaitKPolicy(k), OracleTranslator(), guards=ORACLE_GUARDS)
    assert any(accepted for _, _, accepted, _ in steps)
    for accessible, before, _, accepted, _ in per_sentence(steps):
        # units i = before .. before + len(accepted) - 1 of the sentence each need k + i accessible source units
        assert before + len(accepted) <= max(0, accessible - k + 1)


def test_local_agreement_in_the_cascade_writes_only_agreed_units():
    _, steps = run_talk(LocalAgreementPolicy(), OracleTranslator(), guards=ORACLE_GUARDS)
    assert any(accepted for _, _, accepted, _ in steps)
    previous, state_before = None, None  # the previous draft of the same sentence, after what it let through
    for _, units, accepted, state in steps:
        if state is not state_before:  # a new sentence: nothing to agree with yet
            previous, state_before = None, state
        assert accepted == units[: agreed_units(previous, units)]
        previous = units[len(accepted):]


@pytest.fixture(scope="module")
def tiny_translator(gemma_tok):
    model = build_gemma4_conditional(vocab_size=len(gemma_tok))
    return Translator(model, gemma_tok, HEADS, PromptConfig(target_lang="de"),
                      TranslatorConfig(max_final_tokens=6, max_draft_tokens=6))


@pytest.mark.slow
@pytest.mark.parametrize("selection", [PolicySelection("local-agreement"), PolicySelection("wait-k", 2)],
                         ids=["local-agreement", "wait-k2"])
def test_baselines_on_the_real_translator(selection, tiny_translator):
    units, steps = run_talk(make_policy(selection), tiny_translator, seconds=6.0)
    assert steps
    for _, draft, accepted, _ in steps:
        assert draft[: len(accepted)] == accepted  # a baseline writes a prefix of the model's own draft
    assert len(units) >= sum(len(accepted) for _, _, accepted, _ in steps)


def resolved(*flags):
    """The step, frontier and border the factory builds from these agent flags."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = with_gate(with_preset(parser.parse_args(list(flags))))
    cascade = dataclass_from_args(CascadeOptions, args)
    return (cascade, dataclass_from_args(SourceOptions, args, "source-"),
            dataclass_from_args(GateConfig, args).border_units,
            dataclass_from_args(TranscriberOptions, args).stable_words)


def preset_values(name):
    values = {"stable_words": TranscriberOptions().stable_words, "source_first_sentence_only": True,
              "carry_committed": False, **PRESETS[name]}
    return (values["step_ms"], values["source_margin_ms"], values["source_require_stable"], values["border_units"],
            values["stable_words"], values["source_first_sentence_only"], values["carry_committed"])


def flat(cascade, source, border, stable_words):
    return (cascade.step_ms, source.margin_ms, source.require_stable, border, stable_words,
            source.first_sentence_only, cascade.carry_committed)


def test_presets_set_step_and_gate_and_explicit_flags_win():
    assert flat(*resolved()) == preset_values(DEFAULT_PRESET) == preset_values("low")  # the tuned defaults
    assert flat(*resolved("--preset", "high")) == preset_values("high")
    assert preset_values("low") != preset_values("high")
    flipped = not PRESETS["low"]["source_require_stable"]
    explicit = resolved("--preset", "low", "--step-ms", "500", "--source-margin-ms", "300", "--border-units", "3",
                        "--source-require-stable" if flipped else "--no-source-require-stable",
                        "--no-carry-committed" if PRESETS["low"]["carry_committed"] else "--carry-committed")
    assert flat(*explicit)[:4] == (500.0, 300.0, flipped, 3)
    assert flat(*explicit)[-1] is not PRESETS["low"]["carry_committed"]
    # SimulStream's YAML names only what it sets: the preset (low unless named) fills in the rest.
    from_yaml = with_preset(argparse.Namespace(border_units=3))
    assert dataclass_from_args(SourceOptions, from_yaml, "source-").margin_ms == PRESETS["low"]["source_margin_ms"]
    assert dataclass_from_args(GateConfig, from_yaml).border_units == 3
    # --gate published replaces the preset's frontier: every transcribed word is heard.
    cascade, source, _, _ = resolved("--preset", "low", "--gate", "published")
    assert (source.margin_ms, source.require_stable) == (0.0, False)
    # ... and it drafts the whole open tail and finishes each committed sentence on its own.
    assert not source.first_sentence_only and not cascade.carry_committed
    with pytest.raises(ValueError, match="unknown preset"):
        with_preset(argparse.Namespace(preset="mid"))


def test_gate_operating_points():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    tuned = with_gate(parser.parse_args(["--source-margin-ms", "0", "--source-require-stable"]))
    assert (tuned.source_margin_ms, tuned.source_require_stable, tuned.hold_sentence_end) == (0, True, True)
    published = with_gate(parser.parse_args(["--gate", "published", "--source-margin-ms", "400"]))
    # The published system counts every transcribed word as heard and may end text in a full stop.
    assert published.source_margin_ms == 0 and not published.source_require_stable
    assert not published.hold_sentence_end and published.hold_draft_end and published.skip_unchanged_drafts
    assert published.loop_repeats == 0 and tuned.loop_repeats == 4  # the published system writes loops as they come
    check_known({"gate": "published", "hold_draft_end": False, "min_repeat_units": 1})
    with pytest.raises(ValueError, match="unknown gate"):
        with_gate(argparse.Namespace(gate="fast"))


@pytest.mark.parametrize("policy", [LocalAgreementPolicy(), WaitKPolicy(1)], ids=["local-agreement", "wait-k1"])
def test_baselines_stop_before_a_degenerate_loop(policy):
    reader, draft = CharTranslator(), "Schritt -mit -mit -mit -mit -mit -mit und"
    state = SentenceDecisions()
    policy.decide(scripted(draft), reader, 40, state).text
    assert policy.decide(scripted(draft), reader, 40, state).text == "Schritt -mit -mit -mit"
    # Copies written in earlier steps count too.
    state = SentenceDecisions()
    policy.decide(scripted(" -mit -mit und", prefix="Schritt -mit -mit"), reader, 40, state).text
    assert policy.decide(scripted(" -mit -mit und", prefix="Schritt -mit -mit"), reader, 40, state).text == " -mit"
    loose = type(policy)(*([1] if isinstance(policy, WaitKPolicy) else []), guards=GuardOptions(loop_repeats=0))
    state = SentenceDecisions()
    loose.decide(scripted(draft), reader, 40, state).text
    assert loose.decide(scripted(draft), reader, 40, state).text == "Schritt -mit -mit -mit -mit -mit -mit"


@pytest.mark.parametrize("policy", [LocalAgreementPolicy(), WaitKPolicy(1)], ids=["local-agreement", "wait-k1"])
def test_baselines_hold_back_a_sentence_end_of_an_open_sentence(policy):
    reader, state = CharTranslator(), SentenceDecisions()
    policy.decide(scripted("Ich bin Sarah. Und"), reader, 20, state).text
    text = policy.decide(scripted("Ich bin Sarah. Und"), reader, 20, state).text
    assert text == "Ich bin"  # "Sarah." would end the text in a full stop; "Und" may still grow
    free = type(policy)(*([1] if isinstance(policy, WaitKPolicy) else []),
                       guards=GuardOptions(hold_sentence_end=False))
    state = SentenceDecisions()
    free.decide(scripted("Ich bin Sarah. Und"), reader, 20, state).text
    assert free.decide(scripted("Ich bin Sarah. Und"), reader, 20, state).text.endswith("Sarah.")
