"""Capture leaves the model's outputs bit-identical; replay equals the model's own attention."""
import copy

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from alignatt.mt.capture import HeadRef, QKCapture, capture_heads
from alignatt.mt.replay import replay, visible_key_range
from tiny_models import SLIDING_WINDOW, build, build_gemma4_conditional

PROMPT_LEN = 3 * SLIDING_WINDOW + 1  # longer than the sliding window
NEW_TOKENS = 6


def all_heads(model):
    layers = len(model.get_decoder().layers)
    return [HeadRef(layer, head) for layer in range(layers) for head in range(model.config.get_text_config().num_attention_heads)]


def generate(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=1.05,
                              output_logits=True, return_dict_in_generate=True)


@pytest.mark.parametrize("kind", ["gemma4", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_bit_identical_with_capture(kind, dtype):
    model = build(kind, dtype)
    ids = torch.randint(3, 500, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    plain = generate(model, ids)
    with capture_heads(model, all_heads(model), query_start_position=PROMPT_LEN - 1) as capture:
        captured = generate(model, ids)
    assert torch.equal(plain.sequences, captured.sequences)
    for a, b in zip(plain.logits, captured.logits):
        assert torch.equal(a, b)
    assert capture.layers[0].queries().shape[2] == NEW_TOKENS  # one row per generated token


@pytest.mark.parametrize("kind", ["gemma4", "gemma3"])
def test_teacher_forced_logits_bit_identical(kind):
    model = build(kind, torch.bfloat16)
    ids = torch.randint(3, 500, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(ids).logits
        with capture_heads(model, all_heads(model)):
            captured = model(ids).logits
    assert torch.equal(plain, captured)


def eager_attentions(model, ids):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(ids, output_attentions=True).attentions


@pytest.mark.parametrize("kind", ["gemma4", "gemma3", "gemma4-conditional"])
def test_replay_equals_eager_attention(kind):
    """Every head of sliding, full and KV-shared layers, prompt longer than the window, draft rows."""
    model = build_gemma4_conditional() if kind == "gemma4-conditional" else build(kind)
    ids = torch.randint(3, 500, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(3))
    heads = all_heads(model)
    with capture_heads(model, heads, query_start_position=PROMPT_LEN - 1) as capture:
        sequence = generate(model, ids).sequences
    replayed = replay(capture, heads)
    assert list(replayed.row_positions) == list(range(PROMPT_LEN - 1, PROMPT_LEN - 1 + NEW_TOKENS))
    reference = eager_attentions(model, sequence[:, :-1])
    for i, ref in enumerate(heads):
        expected = reference[ref.layer][0, ref.head, replayed.row_positions, :].numpy()
        assert replayed.probs[i] == pytest.approx(expected, abs=2e-5), ref


def test_kv_shared_full_layer_uses_shared_keys():
    """Gemma-4 layer 5 (full, KV-shared) has no k_proj: its captured keys are layer 2's keys."""
    model = build("gemma4")
    decoder = model.get_decoder()
    assert decoder.layers[5].self_attn.is_kv_shared_layer and not decoder.layers[5].self_attn.is_sliding
    ids = torch.randint(3, 500, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), capture_heads(model, [HeadRef(2, 0), HeadRef(5, 1)]) as capture:
        model(ids)
    assert torch.equal(capture.layers[5].keys()[:, 0], capture.layers[2].keys()[:, 0])  # heads 0,1 -> KV head 0


def test_teacher_forced_rows_of_kv_shared_layers():
    """Outside generate(), KV-shared layers compute every row: all of them are captured and replayed."""
    model = build("gemma4")
    ids = torch.randint(3, 500, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(5))
    heads = [HeadRef(4, 3), HeadRef(5, 0)]
    with torch.no_grad(), capture_heads(model, heads) as capture:
        model(ids)
    replayed = replay(capture, heads)
    reference = eager_attentions(model, ids)
    for i, ref in enumerate(heads):
        assert replayed.probs[i] == pytest.approx(reference[ref.layer][0, ref.head].numpy(), abs=2e-5)


def test_registry_restored_after_exit_and_error():
    model = build("gemma4")
    stock = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with pytest.raises(RuntimeError, match="boom"):
        with capture_heads(model, [HeadRef(0, 0)]):
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not stock
            raise RuntimeError("boom")
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is stock


def test_other_models_are_not_recorded():
    model, other = build("gemma4"), build("gemma4", seed=1)
    ids = torch.randint(3, 500, (1, 5))
    with torch.no_grad(), capture_heads(model, [HeadRef(0, 0)]) as capture:
        other(ids)
    assert capture.layers[0].n_keys == 0


@pytest.mark.parametrize("head, message", [(HeadRef(6, 0), "layer 6 does not exist"),
                                           (HeadRef(0, 4), "head 4 does not exist")])
def test_heads_outside_the_model_are_rejected(head, message):
    with pytest.raises(ValueError, match=message):
        QKCapture(build("gemma4"), [head])


def test_capture_refuses_non_sdpa_models():
    model = build("gemma4")
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="sdpa"):
        QKCapture(model, [HeadRef(0, 0)])


def test_sliding_window_counts_the_row_itself():
    assert visible_key_range(10, sliding_window=4) == (7, 11)
    assert visible_key_range(2, sliding_window=4) == (0, 3)
    assert visible_key_range(10, sliding_window=None) == (0, 11)
