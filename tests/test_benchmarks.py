"""Smoke runs of the benchmarks: the GPU ones in their CPU --tiny mode, the CPU ones on small models. They run end
to end and report what they claim (the numbers themselves are only meaningful on their hardware, see
results/)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agent_fixtures import DEMO_SPEECH_DIR, SPEECH_DIR, save_tiny_checkpoints
from alignatt_eval.bench import chunk as bench_chunk, decode as bench_decode, lm_head as bench_lm_head

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield


@pytest.mark.slow
def test_bench_decode_tiny(tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert bench_decode.main(["--tiny", "--repeats", "1", "--prompt-tokens", "80", "--draft-tokens", "4",
                              "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["rows"]] == ["plain dynamic", "capture dynamic", "compiled plain",
                                                   "compiled capture"]
    assert all(report["bit_identical"].values())
    assert all(len(r["tokens"]) == 4 for r in report["rows"])
    assert report["decoder"]["reused_prompt_tokens"] == 80 - 32
    assert report["replay_ms_per_draft"] > 0
    assert report["replay_vs_teacher_forced_max_abs"] < 1e-4  # fp32 on CPU
    assert len(report["eager_replay_vs_teacher_forced_per_head"]) == len(report["heads"])
    assert max(report["eager_replay_vs_teacher_forced_per_head"]) < 1e-4
    assert "compiled_capture_over_compiled_plain" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_chunk_tiny(tmp_path, capsys):
    out = tmp_path / "chunk.json"
    assert bench_chunk.main(["--tiny", "--open-s", "1.5", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["open_s"] for r in report["rows"]] == [1.5, 4.0]
    for row in report["rows"]:
        assert row["step_ms"] == pytest.approx(row["asr_ms"] + row["aligner_ms"] + row["draft_ms"])
        assert row["rtf_850ms"] == pytest.approx(row["step_ms"] / 850)
        assert row["draft_tokens"] > 0
    assert report["rows"][1]["prompt_tokens"] > report["rows"][0]["prompt_tokens"]
    assert "RTF@850" in capsys.readouterr().out


def test_bench_arguments_are_checked(capsys):
    assert bench_decode.main(["--tiny", "--draft-tokens", "1"]) == 2
    assert bench_chunk.main(["--tiny", "--open-s", "0"]) == 2
    assert "must" in capsys.readouterr().err


def test_full_size_configs_match_the_real_checkpoints():
    """The sizes of the published Gemma-4 E4B (7.46 B text parameters, 2.82 B per-layer embeddings) and
    the published Qwen3-ASR-1.7B / ForcedAligner-0.6B shapes, built on the meta device (no memory)."""
    from types import SimpleNamespace

    from transformers import Gemma4ForConditionalGeneration, Qwen3ASRForConditionalGeneration, \
        Qwen3ASRForTokenClassification

    from alignatt_eval.bench.common import default_heads
    from alignatt_eval.runners.model_configs import gemma4_e4b_config, qwen3_asr_1_7b_config, qwen3_forced_aligner_config
    from alignatt_eval.runners.offline_tokenizers import qwen3_asr_processor

    tokenizer = qwen3_asr_processor().tokenizer
    with torch.device("meta"):
        e4b = Gemma4ForConditionalGeneration(gemma4_e4b_config())
        asr = Qwen3ASRForConditionalGeneration(qwen3_asr_1_7b_config(tokenizer))
        aligner = Qwen3ASRForTokenClassification(qwen3_forced_aligner_config(tokenizer))
    def count(model, name_part=""):
        return sum(p.numel() for n, p in model.named_parameters() if name_part in n)

    assert round(count(e4b) / 1e9, 2) == 7.46 and round(count(e4b, "embed_tokens_per_layer") / 1e9, 2) == 2.82
    text = e4b.config.get_text_config()
    assert [i for i, t in enumerate(text.layer_types) if t == "full_attention"] == [5, 11, 17, 23, 29, 35, 41]
    assert text.num_kv_shared_layers == 18 and text.sliding_window == 512
    assert round(count(asr) / 1e9, 1) == 2.0 and round(count(aligner) / 1e9, 1) == 0.9
    assert aligner.config.num_labels == 5000 and asr.config.text_config.num_hidden_layers == 28
    assert len(default_heads(False, SimpleNamespace(config=e4b.config))) == 4  # the shipped heads fit


@pytest.mark.slow
def test_bench_lm_head_times_both_heads_on_the_same_tokens(tmp_path):
    out = tmp_path / "lm_head.json"
    result = bench_lm_head.main(["--rounds", "1", "--tokens", "4", "--out", str(out)])
    assert result["same_tokens"] and 0 < result["screened_tokens"] <= 2 * 4
    assert set(json.loads(out.read_text())["ms_per_token_median"]) == {"full", "screened"}


@pytest.mark.slow
def test_bench_cpu_gives_the_same_translation_with_the_asr_a_step_ahead(tmp_path):
    """alignatt_eval.bench.cpu through the demo's code path, on tiny checkpoints: one half after the other and pipelined
    write the same text, and the report says which ran and what was measured."""
    checkpoints = save_tiny_checkpoints(tmp_path / "models")
    reports = {}
    for mode in ("sequential", "pipelined"):
        out = tmp_path / f"{mode}.json"
        done = subprocess.run(
            [sys.executable, "-m", "alignatt_eval.bench.cpu", "--seconds", "6", "--out", str(out),
             *(["--pipeline"] if mode == "pipelined" else []),
             "--models", "full", "--wav", str(SPEECH_DIR / "simuleval_test.wav"), "--target-lang", "de",
             *checkpoints.agent_flags(), "--mt-max-final-tokens", "12", "--mt-max-draft-tokens", "6"],
            capture_output=True, text=True, timeout=600, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        reports[mode] = json.loads(out.read_text())
    sequential, pipelined = reports["sequential"], reports["pipelined"]
    assert sequential["translation"] and pipelined["translation_sha1"] == sequential["translation_sha1"]
    assert (sequential["pipeline"], pipelined["pipeline"]) == (False, True)
    assert sequential["steps"] == pipelined["steps"] == 5  # 2 s .. 6 s of audio in 850 ms steps
    for report in reports.values():
        assert report["rtf"] == pytest.approx(report["wall_s"] / report["audio_s"], abs=2e-3)  # both rounded
        assert report["compute_s"] >= report["asr_ms_per_step"] * report["steps"] / 1000 > 0
    assert "asr" in sequential["components_s"] and "asr" not in pipelined["components_s"]  # another thread's


def test_serve_capacity_scores_a_session_against_its_talk_alone_and_its_reference(tmp_path):
    """The capacity benchmark's per-session figures: units that differ from the talk alone, and OmniSTEval's
    LongYAAL from the times the units arrived (CU: audio the step had taken; CA: when the client got them)."""
    from alignatt_eval.bench.serve_capacity import SessionRun, Talk, longyaal, text_delays, units_changed, write_rows

    def run(units, cu_ms):
        return SessionRun("t", 6.0, (0.5,), 1.0, tuple(units), tuple(cu_ms), tuple(x + 400.0 for x in cu_ms), "de")

    alone = run("Wir schlagen eine neue Methode vor .".split(), [2000, 2500, 3000, 3500, 4000, 6000, 6000])
    assert units_changed(alone, alone) == 0.0
    other = run("Wir schlagen eine andere Methode vor .".split(), alone.cu_ms)
    assert units_changed(other, alone) == pytest.approx(1 / 7)
    wav = tmp_path / "t.wav"
    wav.write_bytes(b"")
    cu, ca = longyaal(alone, Talk("t", wav, "Wir schlagen eine neue Methode vor."), tmp_path / "score")
    assert cu == pytest.approx(1000, abs=1) and ca == pytest.approx(cu + 400, abs=1)  # 1 s per word, each 1 s late
    late = run(alone.units, [5000] * 7)
    assert longyaal(late, Talk("t", wav, "Wir schlagen eine neue Methode vor."), tmp_path / "late")[0] > cu
    # "." joins "vor" on the page, so OmniSTEval sees six words; Chinese: one time per character, the space
    # between two Latin runs included
    assert text_delays(list(alone.units), list(alone.cu_ms), "de") == [2000, 2500, 3000, 3500, 4000, 6000]
    assert text_delays(["用", "ACL", "2023", "。"], [1, 2, 3, 4], "zh") == [1, 2, 2, 2, 3, 3, 3, 3, 3, 4]
    table = tmp_path / "rows.tsv"
    write_rows(table, [{"label": "a", "n": 1}])
    write_rows(table, [{"label": "b", "n": 2}])
    assert table.read_text().splitlines() == ["label\tn", "a\t1", "b\t2"]


@pytest.mark.slow
def test_bench_batch_decode_tiny(tmp_path):
    """Sessions drafted one after another and as one batch: the same drafts (fp32, tiny model), timed both ways."""
    from alignatt_eval.bench import batch_decode

    out = tmp_path / "batch.json"
    assert batch_decode.main(["--tiny", "--sessions", "1", "3", "--repeats", "1", "--prompt-tokens", "64",
                              "--draft-tokens", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["sessions"] for r in rows] == [1, 3] and [r["drafts"] for r in rows] == [2, 6]
    assert all(r["alone_ms"] > 0 and r["batched_ms"] > 0 for r in rows)
    assert rows[0]["drafts_differing"] == 0  # a batch of one is the session's own decoder


@pytest.mark.slow
def test_bench_asr_batch_times_and_compares_padded_windows(tmp_path):
    """The batched-ASR measurement on real speech with faster-whisper base: windows of two talks, their encoder
    alone and batched, and whether padding to the longest changes their words (never the longest's own)."""
    import shutil

    from alignatt_eval.bench import asr_batch

    (tmp_path / "wav").mkdir()
    for name in ("a", "b"):
        shutil.copy(DEMO_SPEECH_DIR / "two_cities_16k.wav", tmp_path / "wav" / f"{name}.wav")
    out = tmp_path / "asr.json"
    asr_batch.main(["--talks", str(tmp_path), "--sessions", "2", "--window-s", "2", "8", "--start-s", "0",
                    "--repeats", "1", "--out", str(out)])
    [row] = json.loads(out.read_text())["rows"]
    assert row["window_s"] == [2.0, 8.0] and row["padded_to_frames"] == max(row["encoder_frames"])
    assert row["encoder_frames"][0] < row["encoder_frames"][1]  # 2 s fit in the 10 s minimum, 8 s + 3 s do not
    assert min(row["encoder_alone_s"], row["encoder_batched_padded_s"], row["transcribe_alone_s"]) > 0
    assert 0 <= row["windows_whose_words_change_padded"] <= 1
