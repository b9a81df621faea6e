"""Smoke runs of the GPU benchmarks in their CPU --tiny mode: they run end to end and report what they
claim (the numbers themselves are only meaningful on a GPU, see eval/results/)."""
import json

import pytest
import torch

from eval import bench_chunk, bench_decode


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield


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
    assert "compiled_capture_over_compiled_plain" in capsys.readouterr().out


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
