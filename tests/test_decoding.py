"""Static-cache decoding: graph-safe capture under torch.compile, prompt KV reuse, fallbacks.

CPU runs the same dynamo graphs as CUDA (fullgraph, so any Python side effect in the capture would fail
to trace) with the aot_eager backend; CUDA graphs themselves need a GPU (alignatt_eval/bench/decode.py).
"""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from transformers import CompileConfig, GenerationConfig, StaticCache

from alignatt.mt.capture import HeadRef, capture_heads, new_key_index
from alignatt.accel.options import AccelOptions
from alignatt.generation import CACHE_KWARG
from alignatt.mt.decoding import (MODEL_HEAD, DecodeConfig, DecodeHooks, EagerDecoder, Request,
                                  StaticDecoder, make_decoder)
from alignatt.mt.prompt import PromptConfig
from alignatt.mt.replay import replay
from alignatt.mt.static_capture import StaticQKCapture
from alignatt.mt.translator import Translator
from alignatt.policy.policies import AlignAttPolicy, SentenceDecisions
from tiny_models import SLIDING_WINDOW, build, build_gemma4_conditional, build_qwen3

HEADS = [HeadRef(2, 0), HeadRef(5, 1), HeadRef(1, 3), HeadRef(4, 2)]  # full, KV-shared full, sliding, shared
SOURCE = "We propose a new method for simultaneous speech translation with large language models."
COMPILED = DecodeConfig(decode="compiled", compile_backend="aot_eager", compile_mode="default",
                        max_cache_tokens=256)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles new model and capture objects; without a reset their graphs pile up against
    dynamo's recompile limit (a process serving one talk holds one model)."""
    torch._dynamo.reset()
    yield


def prompt_ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 500, (1, n), generator=torch.Generator().manual_seed(seed))


def generate_logits(model, ids, compile_: bool, cache_len: int = 64, new: int = 10) -> tuple[torch.Tensor, ...]:
    compile_config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
    compile_config._compile_all_devices = compile_
    generation = GenerationConfig(max_new_tokens=new, do_sample=False, compile_config=compile_config,
                                  disable_compile=not compile_, output_logits=True, return_dict_in_generate=True,
                                  pad_token_id=0, eos_token_id=[])
    cache = StaticCache(config=model.config, max_cache_len=cache_len)
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), **{CACHE_KWARG: cache},
                              generation_config=generation).logits


# --- where the new keys sit ------------------------------------------------------------------------

@pytest.mark.parametrize("positions, key_len, expected", [
    ([0, 1, 2], 3, [0, 1, 2]),  # dynamic full layer: keys of positions 0..2
    ([5], 64, [5]),  # static full layer (or sliding, not yet full): the buffer is indexed by position
    ([9], 8, [7]),  # full sliding window, rolled: the new key is last
    ([20, 21, 22], 10, [7, 8, 9]),  # full window + several new tokens: concatenated at the end
    ([6, 7, 8, 9], 10, [6, 7, 8, 9]),  # a window filling up on this call: concatenated from position 0
])
def test_new_key_index(positions, key_len, expected):
    assert new_key_index(torch.tensor(positions), key_len).tolist() == expected


# --- capture under compile -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_capture_keeps_compiled_logits_bit_identical(dtype):
    model = build_gemma4_conditional().to(dtype)
    ids = prompt_ids(3 * SLIDING_WINDOW)  # past the window: sliding layers roll
    plain = generate_logits(model, ids, compile_=True)
    with StaticQKCapture(model, HEADS, 64):
        captured = generate_logits(model, ids, compile_=True)
    assert len(plain) == len(captured) == 10
    assert all(torch.equal(a, b) for a, b in zip(plain, captured))
    uncompiled = generate_logits(model, ids, compile_=False)
    assert [int(x.argmax()) for x in uncompiled] == [int(x.argmax()) for x in plain]


@pytest.mark.slow
def test_static_capture_replays_like_the_eager_capture():
    model = build("gemma4")
    ids, n_new = prompt_ids(20), 10
    capture = StaticQKCapture(model, HEADS, 64)
    with capture:
        generate_logits(model, ids, compile_=True, new=n_new)
    static = replay(capture.sequence(19, 20 + n_new - 1), HEADS)
    with capture_heads(model, HEADS, query_start_position=19) as eager_capture:
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                           pad_token_id=0, eos_token_id=[])
    eager = replay(eager_capture, HEADS)
    assert static.probs.shape == eager.probs.shape == (4, n_new, 20 + n_new - 1)
    assert np.array_equal(static.row_positions, eager.row_positions)
    assert np.abs(static.probs - eager.probs).max() < 2e-5


def test_static_capture_ignores_other_models():
    """The ASR also runs on "sdpa" in the same process: its calls must not land in the buffers."""
    model, other = build("gemma4"), build_qwen3(vocab_size=512)
    capture = StaticQKCapture(model, HEADS, 64)
    with capture, torch.no_grad():
        other(prompt_ids(12))
    assert all(not b.queries.any() and not b.keys.any() for b in capture.layers.values())
    with pytest.raises(RuntimeError, match="nothing was captured"):
        capture.sequence(0, 4)


def test_static_capture_is_removed_on_exit():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = build("gemma4")
    stock = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with StaticQKCapture(model, HEADS, 64):
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not stock
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is stock


# --- decoders through the translator --------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma_model(gemma_tok):
    return build_gemma4_conditional(vocab_size=len(gemma_tok))


def same_decision(a, b, n_heard: int, translators) -> bool:
    """Same per-token head alignments and the same AlignAtt decision (masses may differ in the last float bits)."""
    decisions = [AlignAttPolicy().decide(r, t, n_heard, SentenceDecisions()) for r, t in zip((a, b), translators)]
    return (decisions[0].gate.n_accepted_tokens == decisions[1].gate.n_accepted_tokens
            and decisions[0].text == decisions[1].text
            and [x.head_units for x in a.alignments] == [x.head_units for x in b.alignments])


def translator_with(model, tok, decode_config, **prompt):
    return Translator(model, tok, HEADS, PromptConfig(target_lang="de", **prompt), decode_config=decode_config)


@pytest.mark.slow
@pytest.mark.parametrize("decode_config", [DecodeConfig(decode="static", max_cache_tokens=256), COMPILED],
                         ids=["static", "compiled"])
def test_static_paths_draft_like_the_eager_path(gemma_model, gemma_tok, decode_config):
    eager = translator_with(gemma_model, gemma_tok, DecodeConfig(decode="eager"))
    static = translator_with(gemma_model, gemma_tok, decode_config)
    assert isinstance(static.decoder, StaticDecoder) and isinstance(eager.decoder, EagerDecoder)
    for n_heard, prefix in ((3, ""), (5, "Wir"), (9, "Wir schlagen")):
        a, b = eager.draft(SOURCE, n_heard, prefix), static.draft(SOURCE, n_heard, prefix)
        assert a.draft_ids == b.draft_ids
        assert same_decision(a, b, n_heard, (eager, static))
        assert np.abs(a.attention.source - b.attention.source).max() < 2e-5
    assert eager.finish(SOURCE, "Wir") == static.finish(SOURCE, "Wir")


def test_the_static_path_hands_generate_its_cache_under_the_current_name(gemma_model, gemma_tok):
    """transformers 5.24 renamed generate()'s past_key_values to cache: the old name printed a FutureWarning in
    every demo and talk."""
    static = translator_with(gemma_model, gemma_tok, DecodeConfig(decode="static", max_cache_tokens=256))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        static.draft(SOURCE, 5, "Wir")


@pytest.mark.slow
def test_prompt_kv_is_reused_while_the_prefix_holds(gemma_model, gemma_tok):
    history = [("Good morning everyone.", "Guten Morgen allerseits.")]
    reusing = translator_with(gemma_model, gemma_tok, DecodeConfig(decode="static", max_cache_tokens=256))
    fresh = translator_with(gemma_model, gemma_tok, DecodeConfig(decode="static", max_cache_tokens=256,
                                                                 reuse_prompt_kv=False))
    words = SOURCE.split()
    reused, source_starts = [], []
    later = ("Thanks.", "Danke.")
    for n_words, new_history in ((4, history), (6, history), (9, history), (9, history + [later]), (9, [later])):
        source = " ".join(words[:n_words])
        prompt = reusing.prompts.render(source, "", n_words, new_history)
        generated = reusing._generate(prompt, 8, capture=True)
        reused.append(generated.reused_tokens)
        source_starts.append(int(prompt.source_token_positions[0]))
        expected = fresh._generate(prompt, 8, capture=True)
        assert expected.reused_tokens == 0
        assert generated.token_ids == expected.token_ids
        a, b = replay(generated.captured, HEADS), replay(expected.captured, HEADS)
        assert np.array_equal(a.row_positions, b.row_positions)
        assert np.abs(a.probs - b.probs).max() < 2e-5
    assert reused[0] == 0
    # A growing source: the instruction, the history and the words heard before are reused (past the window).
    assert all(reused[i] > source_starts[i] > 2 * SLIDING_WINDOW for i in (1, 2))
    assert reused[3] < source_starts[3]  # a new history sentence: reuse stops where the prompts part
    assert reused[4] < source_starts[4]


def test_a_prompt_longer_than_the_static_cache_falls_back_to_eager(gemma_model, gemma_tok, caplog):
    eager = translator_with(gemma_model, gemma_tok, DecodeConfig(decode="eager"))
    small = translator_with(gemma_model, gemma_tok, DecodeConfig(decode="static", max_cache_tokens=40))
    a, b = eager.draft(SOURCE, 5, "Wir"), small.draft(SOURCE, 5, "Wir")
    assert a.draft_ids == b.draft_ids and same_decision(a, b, 5, (eager, small))
    assert "exceeds the static cache (40)" in caplog.text


def test_decode_config():
    with pytest.raises(ValueError, match="decode must be one of"):
        DecodeConfig(decode="fast")
    with pytest.raises(ValueError, match="max_cache_tokens must be at least 32"):
        DecodeConfig(max_cache_tokens=0)
    with pytest.raises(ValueError, match="draft_reuse_tokens must be >= 0"):
        AccelOptions(draft_reuse_tokens=-1)
    assert DecodeConfig().resolved(torch.device("cpu")) == "eager"
    assert DecodeConfig().resolved(torch.device("cuda")) == "compiled"
    assert isinstance(make_decoder(build("gemma4"), HEADS, DecodeConfig()), EagerDecoder)


@pytest.mark.slow
def test_the_decoder_without_accel_uses_the_model_s_head_and_imports_no_accel_module():
    """The engine's seam: without a `DecodeAccel` (the GPU's path) the decoder runs the model's own head and
    generate() alone, and neither it nor the cascade around it imports `alignatt.accel`, which plugs in through
    the hooks only (`alignatt.factory`)."""
    model = build("gemma3", vocab_size=512)
    static = make_decoder(model, HEADS[:1], DecodeConfig(decode="static", max_cache_tokens=64))
    assert static.head is MODEL_HEAD and static.draft_reuse is None
    asked = []
    hooks = DecodeHooks(draft_reuse=object())
    compiled = make_decoder(model, HEADS[:1], DecodeConfig(decode="compiled", max_cache_tokens=64),
                            accel=lambda model, mode: asked.append(mode) or hooks)
    assert asked == ["compiled"] and compiled.draft_reuse is None  # no eager pass between graph replays
    code = ("import sys, alignatt.mt.decoding, alignatt.mt.translator, alignatt.mt.loading, alignatt.stream.cascade, "
            "alignatt.asr.whisper, alignatt.asr.qwen3, alignatt.policy.policies; "
            "loaded = [m for m in sys.modules if m.startswith('alignatt.accel')]; assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_static_decoder_without_capture_request_returns_no_rows(gemma_model):
    decoder = StaticDecoder(gemma_model, HEADS, DecodeConfig(decode="static", max_cache_tokens=64), compile=False)
    generation = GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=[])
    result = decoder.generate(Request(input_ids=prompt_ids(12)[0].tolist(), generation=generation))
    assert result.captured is None and len(result.token_ids) == 4


@pytest.mark.slow
def test_warm_up_compiles_every_graph_a_talk_meets(gemma_tok):
    """Sliding layers compile one graph while the window fills and one once it rolls: both at warm-up."""
    from torch._dynamo.utils import counters

    model = build_gemma4_conditional(vocab_size=len(gemma_tok), sliding_window=80)
    translator = translator_with(model, gemma_tok, COMPILED)
    translator.warm_up()
    compiled = counters["stats"]["unique_graphs"]
    lengths = []
    for source in (SOURCE, SOURCE + " " + SOURCE, " ".join([SOURCE] * 3)):  # prompts of ~60, ~75, ~100 tokens
        result = translator.draft(source, 6, "")
        lengths.append(result.prompt.n_tokens + len(result.draft_ids))
    assert min(lengths) < 80 < max(lengths)
    assert counters["stats"]["unique_graphs"] == compiled


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gemma3", "qwen3", "gemma4-plain"])
def test_static_path_on_other_architectures(kind, gemma_tok, qwen_tok):
    """Caches without sliding layers (Qwen3), Gemma-3's hybrid cache, and plain few-shot prompts with their
    line-end stop (generate's stop strings run outside the compiled step)."""
    prompt = {}
    if kind == "qwen3":
        model, tok, heads = build_qwen3(len(qwen_tok)), qwen_tok, [HeadRef(0, 1), HeadRef(2, 3)]
    elif kind == "gemma3":
        model, tok, heads = build("gemma3", vocab_size=len(gemma_tok)), gemma_tok, [HeadRef(1, 0), HeadRef(2, 3)]
    else:
        from alignatt_eval.runners.offline_tokenizers import gemma_tokenizer

        model, tok, heads = build("gemma4", vocab_size=len(gemma_tok)), gemma_tokenizer(chat=False), HEADS
        prompt = {"style": "plain"}
    translators = [Translator(model, tok, heads, PromptConfig(target_lang="it", **prompt), decode_config=config)
                   for config in (DecodeConfig(decode="eager"), DecodeConfig(decode="static", max_cache_tokens=512))]
    for n_heard in (4, 7, 10):
        eager, static = (t.draft(SOURCE, n_heard, "Proponiamo") for t in translators)
        assert eager.draft_ids == static.draft_ids and same_decision(eager, static, n_heard, translators)
    assert translators[0].finish(SOURCE) == translators[1].finish(SOURCE)


@pytest.mark.slow
def test_a_compiler_failure_falls_back_to_eager(gemma_model, gemma_tok, failing_compile_backend, caplog):
    eager = translator_with(gemma_model, gemma_tok, DecodeConfig(decode="eager"))
    broken = translator_with(gemma_model, gemma_tok, DecodeConfig(
        decode="compiled", compile_backend=failing_compile_backend, max_cache_tokens=256))
    broken.warm_up()
    assert broken.decoder.compile_failed and "compiled decoding failed" in caplog.text
    a, b = eager.draft(SOURCE, 5, "Wir"), broken.draft(SOURCE, 5, "Wir")
    assert a.draft_ids == b.draft_ids and same_decision(a, b, 5, (eager, broken))


@pytest.mark.slow
def test_one_compiled_decode_graph_with_tensor_inputs_only(gemma_tok):
    """CUDA graphs re-record for every value of a symbolic int input: the decode step must take tensors only
    (transformers' rolling sliding-window cache passes its length as a Python int), and one graph must serve
    prompts shorter than, across and past the sliding window."""
    from torch._dynamo import register_backend

    graphs = []

    def spy(graph_module, example_inputs):
        graphs.append([type(x).__name__ for x in example_inputs if not isinstance(x, torch.Tensor)])
        return graph_module.forward

    register_backend(spy, name="alignatt_test_spy")
    model = build_gemma4_conditional(vocab_size=len(gemma_tok), sliding_window=80)
    translator = translator_with(model, gemma_tok, DecodeConfig(
        decode="compiled", compile_backend="alignatt_test_spy", compile_mode="default", max_cache_tokens=256))
    translator.warm_up()
    for source in (SOURCE, SOURCE + " " + SOURCE, " ".join([SOURCE] * 3)):
        translator.draft(source, 6, "")
    assert graphs == [[]]
