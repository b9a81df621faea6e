"""Drafts that stop where nothing after them could be written, with the same written text as whole drafts.

The gate is causal (a token's verdict depends on its own and earlier rows only, each row read once), so
generation can stop right after the token the gate rejects; a policy with a quota (wait-k, the AlignAtt lead cap) never writes past its
quota, so generation can stop once the draft has started one unit more; a quota of 0 needs no draft at all.
"""
import numpy as np
import pytest
from transformers import GenerationConfig

from alignatt.audio import SAMPLE_RATE_HZ
from alignatt.policy.policies import AlignAttPolicy, SentenceDecisions, WaitKPolicy
from alignatt.mt.capture import HeadRef
from alignatt.stream.cascade import Cascade, CascadeOptions
from alignatt.mt.decoding import DecodeConfig, Request
from alignatt.policy.gate import GateConfig
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.translator import Translator, TranslatorConfig
from test_cascade import TimelineAsr, timeline
from tiny_models import build_gemma4_conditional

HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3), HeadRef(4, 2)]  # full, KV-shared full, sliding, shared
SOURCE = "We propose a new method for simultaneous speech translation with large language models."
N_SOURCE_UNITS = len(SOURCE.split())
DECODES = {"eager": DecodeConfig(decode="eager"), "static": DecodeConfig(decode="static", max_cache_tokens=256)}


@pytest.fixture(scope="module")
def gemma_model(gemma_tok):
    return build_gemma4_conditional(vocab_size=len(gemma_tok))


def translator(model, tok, decode="eager", query_row="own"):
    return Translator(model, tok, HEADS, PromptConfig(target_lang="de"), TranslatorConfig(max_draft_tokens=10),
                      decode_config=DECODES[decode], query_row=query_row)


def decide(policy, result, t, n_heard, written=0):
    return policy.decide(result, t, n_heard, SentenceDecisions(n_units_written=written))


def same_verdicts(a, b, exact: bool) -> bool:
    """The same verdicts, the stopping one last. Exactly on the eager path; on the static path up to the rounding of
    the prompt KV a call reuses from the previous one (which an early stop changes), in the masses only."""
    if exact:
        return a == b
    return (a.n_accepted_tokens == b.n_accepted_tokens
            and [(v.head_units, v.accepted) for v in a.verdicts] == [(v.head_units, v.accepted) for v in b.verdicts]
            and np.allclose([v.inaccessible_mass for v in a.verdicts], [v.inaccessible_mass for v in b.verdicts],
                            atol=1e-5))


@pytest.mark.slow
@pytest.mark.parametrize("decode, query_row", [("eager", "own"), ("eager", "predicting"), ("static", "own")])
def test_draft_stops_right_after_the_rejected_token_and_accepts_the_same(gemma_model, gemma_tok, decode,
                                                                          query_row):
    t, policy = translator(gemma_model, gemma_tok, decode, query_row), AlignAttPolicy()
    n_cut = 0
    for n_heard in range(0, N_SOURCE_UNITS + 1, 4):
        for prefix in ("", "Wir"):
            whole = decide(policy, t.draft(SOURCE, n_heard, prefix), t, n_heard)
            early_draft = t.draft(SOURCE, n_heard, prefix, stop_at=policy.stop_rule(n_heard))
            early = decide(policy, early_draft, t, n_heard)
            assert early.text == whole.text
            assert same_verdicts(early.gate, whole.gate, exact=decode == "eager")
            whole_draft = t.draft(SOURCE, n_heard, prefix)
            assert early_draft.draft_ids == whole_draft.draft_ids[: len(early_draft.draft_ids)]
            if whole.gate.stopped:
                # The rejected token's row exists once the next token is generated under "own".
                judged_by = whole.gate.n_accepted_tokens + (2 if query_row == "own" else 1)
                assert len(early_draft.draft_ids) == min(judged_by, len(whole_draft.draft_ids))
                n_cut += len(early_draft.draft_ids) < len(whole_draft.draft_ids)
            else:
                assert early_draft.draft_ids == whole_draft.draft_ids
    assert n_cut > 0, "no draft was cut short: the test proves nothing"


@pytest.mark.slow
@pytest.mark.parametrize("policy", [WaitKPolicy(2), AlignAttPolicy(max_lead_units=1)], ids=["wait-k2", "cap1"])
def test_draft_stops_past_the_quota_and_the_policy_writes_the_same(gemma_model, gemma_tok, policy):
    t = translator(gemma_model, gemma_tok)
    n_cut = 0
    for n_heard in range(0, N_SOURCE_UNITS + 1, 3):
        for written, prefix in ((0, ""), (1, "Wir")):
            quota = policy.quota(n_heard, SentenceDecisions(n_units_written=written))
            if quota is None or quota == 0:
                continue
            whole = t.draft(SOURCE, n_heard, prefix)
            early = t.draft(SOURCE, n_heard, prefix, max_units=quota)
            texts = [decide(policy, result, t, n_heard, written).text for result in (whole, early)]
            assert texts[0] == texts[1]
            assert early.draft_ids == whole.draft_ids[: len(early.draft_ids)]
            n_cut += len(early.draft_ids) < len(whole.draft_ids)
    assert n_cut > 0


TALK = "Hello world, this is it. We propose a new method today. And it works"


@pytest.mark.slow
def test_a_talk_writes_the_same_with_fewer_draft_tokens(gemma_model, gemma_tok):
    # Stops at the gate and at the quota, and skips quota-0 drafts. A strict gate: the diffuse random heads put
    # little mass on any one unheard word, under the default floor.
    policy = AlignAttPolicy(max_lead_units=0, gate=GateConfig(border_units=0, soft_floor_mass=0.0))
    t = translator(gemma_model, gemma_tok)

    def run(whole_drafts):
        cascade = Cascade(TimelineAsr(timeline(TALK)), t,
                          CascadeOptions(step_ms=500, min_audio_s=1.0, whole_drafts=whole_drafts), policy=policy)
        reports, units = [], []
        for _ in range(20):  # 5 s in 250 ms chunks
            units += cascade.push(np.zeros(SAMPLE_RATE_HZ // 4, dtype=np.float32), SAMPLE_RATE_HZ)
            if cascade.last_step is not None:
                reports.append(cascade.last_step)
        return units + cascade.finish(), reports

    whole_units, whole_steps = run(True)
    early_units, early_steps = run(False)
    assert early_units == whole_units
    assert [s.written for s in early_steps] == [s.written for s in whole_steps]
    assert sum(s.n_draft_tokens for s in early_steps) < sum(s.n_draft_tokens for s in whole_steps)
    # Nothing heard yet: nothing to draft, and the log says why.
    first = next(s for s in early_steps if s.n_source_units and s.n_accessible_units == 0)
    assert first.n_draft_tokens == 0 and first.quota == 0


def test_early_stops_need_the_capture():
    with pytest.raises(ValueError, match="capture_from"):
        Request([1, 2], GenerationConfig(), stop_when=lambda captured, token_ids: True)
