"""Drafts of several sessions in one batch (`alignatt.mt.batching`): each row is drafted, gated and cached as its
session would be alone.

One row must equal the session's own decoder bit for bit (the batch cache is loaded from and stored back to the
session's cache exactly). Several rows run other matrix shapes, whose fp32 rounding may differ; in float64 that
rounding is far below any greedy margin of the tiny model, so there the tokens and alignments must be equal.
"""
import numpy as np
import pytest
import torch

from alignatt.mt.batching import BatchDecoder, BatchRow, DraftBatcher, slot_size
from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import DecodeConfig
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.replay import replay
from alignatt.mt.translator import DraftCall, Translator
from alignatt.policy.policies import AlignAttPolicy
from tiny_models import build_gemma4_conditional

HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3), HeadRef(4, 2)]  # full, KV-shared full, sliding, shared
OTHER_HEADS = [HeadRef(0, 1), HeadRef(2, 3), HeadRef(3, 0)]  # another direction's heads: a union is captured
WORDS = "We propose a new method for simultaneous speech translation with large language models .".split()
STATIC = DecodeConfig(decode="static", max_cache_tokens=256)


def source(n_words: int) -> str:
    return " ".join(WORDS[:n_words])


@pytest.fixture(scope="module")
def model64(gemma_tok):
    return build_gemma4_conditional(vocab_size=len(gemma_tok)).to(torch.float64)


@pytest.fixture(scope="module")
def model32(gemma_tok):
    return build_gemma4_conditional(vocab_size=len(gemma_tok))


def translators(model, tok, langs=("de", "de", "it"), heads=(HEADS, HEADS, OTHER_HEADS)):
    return [Translator(model, tok, h, PromptConfig(target_lang=lang), decode_config=STATIC)
            for lang, h in zip(langs, heads)]


def gate_stop(n_heard: int):
    return AlignAttPolicy().stop_rule(n_heard)


# Three sessions' calls at three steps: growing sources (their prompt prefixes are reused), accepted prefixes, the
# gate's stop rule on two of them, a unit bound on the third.
STEPS = [
    [DraftCall(source(4), 3), DraftCall(source(6), 5, "Wir", stop_at=gate_stop(5)), DraftCall(source(8), 8, "Noi")],
    [DraftCall(source(6), 5, stop_at=gate_stop(5)), DraftCall(source(9), 8, "Wir schlagen"),
     DraftCall(source(10), 10, "Noi", max_units=2)],
    [DraftCall(source(9), 2, "Wir", stop_at=gate_stop(2)), DraftCall(source(12), 11, "Wir schlagen eine"),
     DraftCall(source(12), 3, "Noi proponiamo", stop_at=gate_stop(3))],
]


def draft_batched(decoder: BatchDecoder, sessions, calls):
    prepared = [t.prepare_draft(c) for t, c in zip(sessions, calls)]
    generated = decoder.generate_many([BatchRow(t.decoder, p.request) for t, p in zip(sessions, prepared)])
    return [t.complete_draft(p, g) for t, p, g in zip(sessions, prepared, generated)], generated


def test_a_batch_of_one_is_the_session_s_own_decoder_bit_for_bit(model32, gemma_tok):
    own, batched = (translators(model32, gemma_tok, ("de",), (HEADS,))[0] for _ in range(2))
    decoder = BatchDecoder(model32, STATIC.max_cache_tokens)
    reused = []
    for calls in STEPS:
        prepared = [own.prepare_draft(calls[1]), batched.prepare_draft(calls[1])]
        alone = own.decoder.generate(prepared[0].request)
        together = decoder.generate_many([BatchRow(batched.decoder, prepared[1].request)])[0]
        assert together.token_ids == alone.token_ids and together.reused_tokens == alone.reused_tokens
        a, b = replay(alone.captured, HEADS), replay(together.captured, HEADS)
        assert np.array_equal(a.probs, b.probs) and np.array_equal(a.row_positions, b.row_positions)
        assert own.decoder.prompt_kv.cached_ids == batched.decoder.prompt_kv.cached_ids
        reused.append(together.reused_tokens)
    assert reused[0] == 0 and all(r > 20 for r in reused[1:])  # later calls start from the cached prefix


@pytest.mark.slow
@pytest.mark.parametrize("compile_slots", [False, True], ids=["exact", "slots"])
def test_batched_drafts_equal_each_session_alone(model64, gemma_tok, compile_slots):
    """Rows of different lengths, languages and heads, each stopped by its own rule, over steps that reuse each
    session's cache; with slot sizes (as under compilation) three rows run in a batch of four."""
    alone, batched = translators(model64, gemma_tok), translators(model64, gemma_tok)
    decoder = BatchDecoder(model64, STATIC.max_cache_tokens, compile=compile_slots)
    for step, calls in enumerate(STEPS):
        expected = [t.draft_call(c) for t, c in zip(alone, calls)]
        results, generated = draft_batched(decoder, batched, calls)
        for a, b in zip(expected, results):
            assert b.draft_ids == a.draft_ids and b.ended == a.ended
            assert [x.head_units for x in b.alignments] == [x.head_units for x in a.alignments]
            assert np.allclose(b.attention.source, a.attention.source, atol=1e-9)
        if step:
            assert all(g.reused_tokens > 0 for g in generated)
    assert [n for n, _ in decoder._slots] == [4 if compile_slots else 3]
    whole = [t.draft_call(DraftCall(c.source, c.n_accessible_units, c.target_prefix)) for t, c in zip(alone, calls)]
    assert len(results[0].draft_ids) < len(whole[0].draft_ids)  # its gate stopped one row, the others went on
    assert len(results[1].draft_ids) > len(results[0].draft_ids)


@pytest.mark.slow
def test_rows_that_cannot_share_a_batch_are_drafted_alone(model64, gemma_tok):
    """A final pass (its first token may not end the translation) does not share a batch with drafts; the batcher
    drafts what it cannot batch on each session's own decoder."""
    sessions = translators(model64, gemma_tok)
    draft = sessions[0].prepare_draft(DraftCall(source(5), 4))
    final = sessions[1]._request(sessions[1].prompts.render(source(5), "", None), 8, capture=False,
                                 must_continue=True)
    decoder = BatchDecoder(model64, STATIC.max_cache_tokens)
    assert not decoder.fits([BatchRow(sessions[0].decoder, draft.request), BatchRow(sessions[1].decoder, final)])
    assert not decoder.fits([BatchRow(sessions[0].decoder, draft.request)] * 2)  # one cache, one row
    with pytest.raises(ValueError, match="cannot share one batch"):
        decoder.generate_many([BatchRow(sessions[0].decoder, draft.request)] * 2)
    batcher, fresh = DraftBatcher(), translators(model64, gemma_tok)
    calls = [DraftCall(source(5), 4), DraftCall("", 0), DraftCall(source(7), 6, "Noi")]
    results = batcher.draft_many(list(zip(sessions, calls)))
    assert results[1].draft_ids == () and batcher.counts.rows == 2 and batcher.counts.batches == 1
    assert [r.draft_ids for r in results] == [t.draft_call(c).draft_ids for t, c in zip(fresh, calls)]


def test_slot_sizes_are_powers_of_two():
    assert [slot_size(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]


@pytest.mark.slow
def test_compiled_sessions_batch_in_slots_like_each_alone(model64, gemma_tok):
    """Sessions on the compiled path (dynamo full graphs, as CUDA graphs need; aot_eager on CPU): the batched capture
    writes every row inside the graph, and three rows in a slot of four draft as each session alone."""
    torch._dynamo.reset()
    compiled = DecodeConfig(decode="compiled", compile_backend="aot_eager", compile_mode="default",
                            max_cache_tokens=256)

    def sessions():
        return [Translator(model64, gemma_tok, h, PromptConfig(target_lang=lang), decode_config=compiled)
                for lang, h in zip(("de", "de", "it"), (HEADS, HEADS, OTHER_HEADS))]
    alone, batched = sessions(), sessions()
    decoder = BatchDecoder(model64, compiled.max_cache_tokens, compile=True)
    for calls in STEPS[:2]:
        expected = [t.draft_call(c) for t, c in zip(alone, calls)]
        results, _ = draft_batched(decoder, batched, calls)
        assert [r.draft_ids for r in results] == [e.draft_ids for e in expected]
        assert all(np.allclose(r.attention.source, e.attention.source, atol=1e-9) for r, e in zip(results, expected))
    assert [n for n, _ in decoder._slots] == [4]


@pytest.mark.slow
def test_the_server_compiles_its_batch_slots_before_the_first_talk(gemma_tok):
    """Compiled sessions batch in slot sizes; the server drafts once per slot size at load, so no batched graph is
    compiled mid-talk (with three sessions allowed: slots of 2 and 4)."""
    from alignatt.serve.scheduler import Scheduler, SchedulerOptions
    from serve_fixtures import ScriptedBuilder

    torch._dynamo.reset()
    compiled = DecodeConfig(decode="compiled", compile_backend="aot_eager", compile_mode="default",
                            max_cache_tokens=256)
    builder = ScriptedBuilder(build_gemma4_conditional(vocab_size=len(gemma_tok)), gemma_tok, decode=compiled)
    scheduler = Scheduler(builder, SchedulerOptions(batch_drafts="on"))
    scheduler.warm_up_batches(3, builder.build(builder.defaults))
    assert scheduler._batcher.counts.batches == 2 and scheduler._batcher.counts.rows == 5
    [decoder] = scheduler._batcher._decoders.values()
    assert sorted(n for n, _ in decoder._slots) == [2, 4]
    unbatched = Scheduler(builder, SchedulerOptions(batch_drafts="off"))
    unbatched.warm_up_batches(3, builder.build(builder.defaults))  # nothing is batched: nothing to compile
    assert unbatched._batcher.counts.batches == 0
