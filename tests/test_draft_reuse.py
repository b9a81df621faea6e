"""Draft reuse on the static path: a call's first tokens proposed from earlier calls and verified in one pass give
generate()'s tokens and capture with fewer forward passes."""
import numpy as np
import pytest
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import DecodeConfig, Request, StaticDecoder
from alignatt.accel.draft_reuse import (ColumnHead, DraftReuse, NgramProposer, accepted_prefix, greedy_tokens,
                                        head_by_columns, processed_rows)
from alignatt.accel.options import AccelOptions
from alignatt.accel.screened_head import make_screen
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.replay import replay
from alignatt.mt.translator import Translator
from alignatt.policy.policies import AlignAttPolicy, SentenceDecisions
from tiny_models import build, build_gemma4_conditional

HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3), HeadRef(4, 2)]  # full, KV-shared full, sliding, shared
WORDS = "We propose a new method for simultaneous speech translation with large language models today".split()
STATIC = dict(decode="static", max_cache_tokens=256)


@pytest.fixture(scope="module")
def gemma_model(gemma_tok):
    return build_gemma4_conditional(vocab_size=len(gemma_tok))


class ForwardCounter:
    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.count += 1


def talk_of_calls(translator: Translator) -> list:
    """A talk's worth of calls: drafts of a growing source and prefix, a repeated draft, a final pass."""
    results = []
    for n_words, prefix in ((4, ""), (6, ""), (6, ""), (9, "Wir"), (12, "Wir schlagen")):
        result = translator.draft(" ".join(WORDS[:n_words]), n_words - 1, prefix)
        decision = AlignAttPolicy().decide(result, translator, n_words - 1, SentenceDecisions())
        results.append((result.draft_ids, [x.head_units for x in result.alignments], decision.text, result.attention))
    results.append(translator.finish(" ".join(WORDS), "Wir schlagen"))
    return results


@pytest.mark.slow
def test_draft_reuse_gives_generates_tokens_and_attention_in_fewer_forward_passes(gemma_model, gemma_tok):
    plain = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"),
                       decode_config=DecodeConfig(**STATIC))
    looking = Translator(gemma_model, gemma_tok, HEADS, PromptConfig(target_lang="de"),
                         decode_config=DecodeConfig(**STATIC), accel=AccelOptions(draft_reuse_tokens=4).decode_hooks)
    assert looking.decoder.draft_reuse is not None and plain.decoder.draft_reuse is None
    counts = []
    outputs = []
    for translator in (plain, looking):
        counter = ForwardCounter(gemma_model)
        outputs.append(talk_of_calls(translator))
        counter.handle.remove()
        counts.append(counter.count)
    for a, b in zip(*outputs):
        if isinstance(a, str):
            assert a == b
            continue
        assert a[:3] == b[:3]  # tokens, where the heads point, written text
        assert np.abs(a[3].source - b[3].source).max() < 2e-5  # the gate's attention, up to rounding
    assert counts[1] < counts[0]


class StopAtToken(StoppingCriteria):
    def __init__(self, n_prompt: int, n_tokens: int):
        self.n_prompt, self.n_tokens = n_prompt, n_tokens

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((1,), input_ids.shape[1] - self.n_prompt >= self.n_tokens, dtype=torch.bool)


PROMPT = list(range(10, 40))


def decoder_pair(model, draft_reuse_tokens: int = 8) -> tuple[StaticDecoder, StaticDecoder]:
    return (StaticDecoder(model, HEADS, DecodeConfig(**STATIC), compile=False),
            StaticDecoder(model, HEADS, DecodeConfig(**STATIC), compile=False,
                          draft_reuse=DraftReuse(model, draft_reuse_tokens)))


def request(max_new_tokens=6, eos=(1,), stop_after=None, suppress=None) -> Request:
    generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.05,
                                  eos_token_id=list(eos), pad_token_id=0, begin_suppress_tokens=suppress)
    kwargs = {}
    if stop_after is not None:
        kwargs = {"stopping_criteria": StoppingCriteriaList([StopAtToken(len(PROMPT), stop_after)])}
    return Request(PROMPT, generation, capture_from=len(PROMPT) - 1, generate_kwargs=kwargs,
                   stop_when=lambda captured, tokens: False)


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["criterion at 1", "criterion at 2", "criterion at 3", "end token", "budget"])
def test_a_stop_inside_the_verified_tokens_ends_the_call_where_generate_would(gemma_model, cut):
    """The same prompt twice: the second call's proposal is the first call's tokens, so its first pass verifies
    them all, and a stopping criterion, the end token or the token budget must cut them where generate() did."""
    plain, looking = decoder_pair(gemma_model)
    whole = plain.generate(request()).token_ids
    looking.generate(request())  # remembered: the next call's proposal
    assert looking.draft_reuse.proposer.propose(PROMPT, 8) == whole and len(set(whole[:2])) == 2
    if cut.startswith("criterion"):
        cut_request, n_kept = request(stop_after=int(cut[-1])), int(cut[-1])
    elif cut == "end token":
        cut_request, n_kept = request(eos=(whole[1],)), 2
    else:
        cut_request, n_kept = request(max_new_tokens=3), 3
    counter = ForwardCounter(gemma_model)
    cut_call = looking.generate(cut_request)
    counter.handle.remove()
    assert cut_call.token_ids == whole[:n_kept]
    assert counter.count == 1  # the prompt and the proposal in one pass; generate() never ran
    expected = plain.generate(cut_request)
    assert expected.token_ids == whole[:n_kept]
    a, b = replay(expected.captured, HEADS), replay(cut_call.captured, HEADS)
    assert np.array_equal(a.row_positions, b.row_positions) and np.abs(a.probs - b.probs).max() < 2e-5


def test_a_suppressed_first_token_departs_from_the_proposal_and_generate_goes_on_unsuppressed(gemma_model):
    """A final pass that must not end at once (begin_suppress_tokens): the proposal's first token is suppressed, so
    the pass keeps one other token, and generate() continues without suppressing anything more."""
    plain, looking = decoder_pair(gemma_model)
    whole = plain.generate(request()).token_ids
    looking.generate(request())
    suppressed = request(suppress=[whole[0]])
    expected = plain.generate(suppressed).token_ids
    assert expected[0] != whole[0]
    counter = ForwardCounter(gemma_model)
    assert looking.generate(suppressed).token_ids == expected
    counter.handle.remove()
    assert counter.count == len(expected)  # the pass gave the first token, generate() one pass for each of the rest


def test_the_head_by_columns_gives_the_linear_heads_logits_and_is_removed_after(gemma_model):
    hidden = torch.randn(1, 5, gemma_model.config.get_text_config().hidden_size)
    original = gemma_model.lm_head
    with head_by_columns(gemma_model):
        assert isinstance(gemma_model.lm_head, ColumnHead)
        by_columns = gemma_model.lm_head(hidden)
    assert gemma_model.lm_head is original
    expected = original(hidden)
    assert by_columns.shape == expected.shape
    assert torch.allclose(by_columns, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(by_columns.argmax(-1), expected.argmax(-1))


def test_proposals_come_from_the_longest_latest_match():
    proposer = NgramProposer(history_calls=2, max_ngram=3)
    proposer.remember([1, 2, 3, 4, 5, 6])
    proposer.remember([7, 2, 3, 9, 9, 8, 3, 10])
    assert proposer.propose([0, 2, 3], 2) == [9, 9]  # "2 3" in the latest call beats "3" later in it
    assert proposer.propose([0, 8, 3], 3) == [10]  # as many as followed
    assert proposer.propose([0, 1, 2, 3], 2) == [4, 5]  # the longer match of an older call
    assert proposer.propose([42], 2) == []
    proposer.remember([0, 0, 0])  # the oldest call is forgotten
    assert proposer.propose([0, 1, 2, 3], 2) == [9, 9]


def test_greedy_tokens_apply_the_penalty_to_earlier_tokens_and_the_suppression_to_the_first_only():
    logits = torch.tensor([[0.0, 2.0, 1.9, 0.0], [0.0, 2.0, 1.9, 0.0], [0.0, 0.0, 0.0, 3.0]])
    sequence = [0, 3, 1, 1]  # the prompt [0, 3], then the proposed [1, 1]; row r predicts token r + 1 of the tail

    def tokens(config: GenerationConfig) -> list[int]:
        return list(greedy_tokens(processed_rows(logits, config, 2), 3, sequence))
    assert tokens(GenerationConfig(repetition_penalty=1.2)) == [1, 2, 3]  # 1 is penalised once it was generated
    assert tokens(GenerationConfig(begin_suppress_tokens=[1])) == [2, 1, 3]


def test_the_accepted_prefix_reads_no_row_past_the_first_departure():
    read = []

    def greedy(tokens):
        for token in tokens:
            read.append(token)
            yield token
    assert accepted_prefix(greedy([1, 2, 3]), [1, 1]) == [1, 2] and read == [1, 2]
    assert accepted_prefix([1, 1, 5], [1, 1]) == [1, 1, 5]
    assert accepted_prefix([7, 1, 5], [1, 1]) == [7]


# gemma4: a soft cap after the head
@pytest.mark.parametrize("kind", ["gemma3", pytest.param("gemma4", marks=pytest.mark.slow)])
def test_a_screened_verification_gives_the_full_heads_tokens_and_never_computes_the_full_head(kind, monkeypatch):
    """The screened head verifies the proposal row by row: the same tokens as decoding without draft reuse, for calls
    whose proposals hold, calls whose proposals depart at once and a call whose proposed first token is suppressed;
    every row read is screened (the full head neither by columns nor unscreened)."""
    model = build(kind, vocab_size=4096)
    config = DecodeConfig(**STATIC)

    def decoder(draft_reuse_tokens: int = 0) -> StaticDecoder:
        hooks = AccelOptions(lm_head="screened", draft_reuse_tokens=draft_reuse_tokens).decode_hooks(model, "static")
        return StaticDecoder(model, HEADS[:1], config, compile=False, head=hooks.head, draft_reuse=hooks.draft_reuse)
    plain, looking = decoder(), decoder(draft_reuse_tokens=4)
    assert looking.draft_reuse.screen is looking.head  # the verification reads the decoder's own screen
    monkeypatch.setattr("alignatt.accel.draft_reuse.head_by_columns", None)  # the full head's path would fail
    rows = []  # (rows the pass offered, rows read)
    offered, counts = looking.head.processed_rows, looking.head.counts

    def counted(hidden, merged, n_prompt_tokens):
        scores_of, entry = offered(hidden, merged, n_prompt_tokens), [len(hidden), 0]
        rows.append(entry)

        def read(row, context):
            entry[1] += 1
            screened_before = counts.tokens
            scores = scores_of(row, context)
            assert counts.tokens == screened_before + 1  # screened, not the full head's unscreened path
            return scores
        return read
    monkeypatch.setattr(looking.head, "processed_rows", counted)

    def request(ids: list[int], suppressed: list[int]) -> Request:
        generation = GenerationConfig(max_new_tokens=8, do_sample=False, repetition_penalty=1.05, eos_token_id=1,
                                      pad_token_id=0, begin_suppress_tokens=suppressed)
        return Request(ids, generation, capture_from=len(ids) - 1)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 4096, (24,), generator=generator).tolist() for _ in range(3)]
    first_token = decoder().generate(request(prompts[1], [1])).token_ids[0]
    # Repeated prompts (the proposal holds), a cut prompt whose proposal is its own random continuation (departs at
    # once), a new prompt that ends like an earlier one, a repeated prompt whose proposed first token is suppressed.
    calls = [(prompts[0], [1]), (prompts[0], [1]), (prompts[1], [1]), (prompts[0][:20], [1]),
             (prompts[2] + prompts[0][-6:], [1]), (prompts[1], [first_token])]
    passes = []
    for each in (plain, looking):
        counter = ForwardCounter(model)
        tokens = [each.generate(request(ids, suppressed)).token_ids for ids, suppressed in calls]
        counter.handle.remove()
        passes.append(counter.count)
        if each is plain:
            expected = tokens
    assert tokens == expected
    assert expected[-1][0] != first_token
    assert passes[1] < passes[0]
    assert any(read == n_rows for n_rows, read in rows)  # a whole proposal held
    assert any(read < n_rows for n_rows, read in rows)  # rows after a departure were never computed
    assert counts.fallbacks == 0


def test_screened_rows_score_the_winner_as_the_capped_full_head_does():
    """Row by row, the screened choice and its score are the full head's after the soft cap, the penalty over the
    earlier tokens and the first-step suppression (hidden rows large enough for the cap to bend the logits)."""
    model = build("gemma4", vocab_size=4096)
    screen = make_screen(model, "screened", False)
    hidden = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 40
    full = screen.full_logits(hidden)
    assert torch.nn.functional.linear(hidden, model.lm_head.weight).max() - full.max() > 5  # the cap bends them
    leaders = full.topk(2, dim=-1).indices
    sequence = [5, 6, int(leaders[1, 0]), int(leaders[2, 0]), int(leaders[2, 1])]  # row r's leaders seen before it
    generation = GenerationConfig(do_sample=False, repetition_penalty=1.3, begin_suppress_tokens=[int(leaders[0, 0])])
    screened = screen.processed_rows(hidden, generation, n_prompt_tokens=3)
    expected = processed_rows(full, generation, n_prompt_tokens=3)
    for row in range(3):
        context = torch.tensor([sequence[:3 + row]])
        got, want = screened(row, context)[0], expected(row, context)[0]
        assert int(got.argmax()) == int(want.argmax())
        assert abs(float(got.max()) - float(want.max())) < 1e-4
    assert int(expected(0, torch.tensor([sequence[:3]]))[0].argmax()) != int(leaders[0, 0])  # the suppression bit
