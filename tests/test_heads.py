"""The heads file: round trip, shipped defaults, declared query rows, rejection of files that do not fit the
model."""
import json
import logging
from pathlib import Path

import pytest

from alignatt.mt.capture import HeadRef
from alignatt.mt.heads import (QUERY_ROWS, HeadsFile, HeadScore, HeadsFileError, query_row_position,
                            shipped_heads_path)
from tiny_models import build, build_gemma4_conditional

REPO = Path(__file__).resolve().parents[1]


def tiny_heads(**overrides):
    values = dict(model_id="tiny/gemma4", direction="en-de", num_hidden_layers=6, num_attention_heads=4, top_k=2,
                  heads=(HeadScore(2, 1, 0.9), HeadScore(5, 0, 0.8), HeadScore(0, 3, None)),
                  calibration={"pairs": 12})
    values.update(overrides)
    return HeadsFile(**values)


@pytest.mark.parametrize("query_row", QUERY_ROWS)
def test_round_trip(tmp_path, query_row):
    heads = tiny_heads(revision="main", query_row=query_row)
    heads.save(tmp_path / "h.json")
    assert json.loads((tmp_path / "h.json").read_text())["query_row"] == query_row
    loaded = HeadsFile.load(tmp_path / "h.json")
    assert loaded == heads
    assert loaded.query_row == query_row
    assert loaded.selected() == (HeadRef(2, 1), HeadRef(5, 0))


def test_new_files_default_to_own_rows():
    assert tiny_heads().query_row == "own"


def test_file_without_query_row_is_read_as_predicting_with_one_warning(caplog):
    data = tiny_heads().to_dict()
    del data["query_row"]
    caplog.set_level(logging.WARNING, logger="alignatt.mt.heads")
    assert HeadsFile.from_dict(data).query_row == "predicting"
    warnings = [r for r in caplog.records if "no query_row" in r.getMessage()]
    assert len(warnings) == 1 and "tiny/gemma4 en-de" in warnings[0].getMessage()


@pytest.mark.parametrize("value", ["predict", "OWN", "", None, 1])
def test_unknown_query_row_is_rejected(value):
    data = tiny_heads().to_dict()
    data["query_row"] = value
    with pytest.raises(HeadsFileError, match="query_row must be one of own, predicting"):
        HeadsFile.from_dict(data)
    with pytest.raises(HeadsFileError, match="query_row must be one of own, predicting"):
        tiny_heads(query_row=value)


def test_query_row_position():
    assert query_row_position(10, "own") == 10
    assert query_row_position(10, "predicting") == 9
    with pytest.raises(HeadsFileError, match="query_row"):
        query_row_position(10, "next")


def test_fits_the_model_it_was_made_for():
    tiny_heads().check_fits(build("gemma4").config)
    tiny_heads().check_fits(build_gemma4_conditional().config)  # nested text config


def test_warns_only_when_the_heads_were_calibrated_on_other_weights(caplog):
    """The offline demo's heads were calibrated on the GGUF Q4_K_M file of gemma-3-270m and name the model by its
    hub id; the file is loaded from a folder whose path differs from machine to machine."""
    heads = tiny_heads(calibration={"model_loading": {"gguf_file": "tiny-q4_k_m.gguf"}})
    config = build("gemma4").config
    with caplog.at_level(logging.WARNING, logger="alignatt.mt.heads"):
        heads.check_fits(config, "/home/me/.cache/tiny_gguf", "tiny-q4_k_m.gguf")
        heads.check_fits(config, "tiny/gemma4")
        assert not caplog.records
        heads.check_fits(config, "/home/me/.cache/tiny_gguf", "tiny-q8_0.gguf")
        heads.check_fits(config, "other/model")
    assert [r.getMessage() for r in caplog.records] == [
        "heads calibrated on tiny/gemma4 are used with /home/me/.cache/tiny_gguf",
        "heads calibrated on tiny/gemma4 are used with other/model"]


@pytest.mark.parametrize("overrides, message", [
    (dict(num_hidden_layers=42, num_attention_heads=8), "42 layers x 8 heads"),
    (dict(heads=(HeadScore(6, 0),), top_k=1), "outside the model"),
    (dict(heads=(HeadScore(1, 4),), top_k=1), "outside the model"),
])
def test_rejects_a_file_that_does_not_fit(overrides, message):
    with pytest.raises(HeadsFileError, match=message):
        tiny_heads(**overrides).check_fits(build("gemma4").config)


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "not a heads file"),
    (json.dumps({"format": "alignatt-heads/1", "model": {"id": "x"}}), "malformed"),
])
def test_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HeadsFileError, match=message):
        HeadsFile.load(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(HeadsFileError, match="not found"):
        HeadsFile.load(tmp_path / "missing.json")


def test_invalid_contents_are_rejected():
    with pytest.raises(HeadsFileError, match="top_k"):
        tiny_heads(top_k=5)
    with pytest.raises(HeadsFileError, match="twice"):
        tiny_heads(heads=(HeadScore(1, 1), HeadScore(1, 1)), top_k=1)


@pytest.mark.parametrize("direction, top4", [
    ("en-de", [(11, 3), (6, 5), (17, 3), (20, 0)]),
    ("en-it", [(11, 3), (6, 5), (17, 3), (20, 0)]),
    ("en-zh", [(11, 3), (6, 5), (17, 3), (5, 0)]),
])
def test_shipped_published_gemma4_heads(direction, top4):
    heads = HeadsFile.load(shipped_heads_path("google/gemma-4-E4B-it", direction))
    assert [(h.layer, h.head) for h in heads.selected()] == top4
    assert (heads.num_hidden_layers, heads.num_attention_heads) == (42, 8)
    assert "published" in heads.calibration["provenance"]
    assert heads.query_row == "own"  # the reference scored its heads on each token's own row


@pytest.mark.parametrize("path", ["alignatt/mt/heads_files/gemma-3-270m.en-de.json",
                                  "results/proxy/inputs/gemma-3-270m.en-de.heads.json"])
def test_committed_calibration_runs_declare_predicting_rows(path, caplog):
    """These runs predate the key; their calibration metadata says they scored the predicting row."""
    caplog.set_level(logging.WARNING, logger="alignatt.mt.heads")
    heads = HeadsFile.load(REPO / path)
    assert heads.query_row == "predicting"
    assert "the query that predicts the token" in heads.calibration["score"]
    assert "no query_row" not in caplog.text


def test_no_shipped_file_for_unknown_models():
    with pytest.raises(HeadsFileError, match="calibrate"):
        shipped_heads_path("someone/other-model", "en-de")


def test_the_run_direction_must_match_the_heads_file():
    import argparse

    from alignatt.factory import load_heads
    from alignatt.mt.prompt import PromptConfig
    from alignatt.mt.translator import TranslatorConfig

    en_de = str(shipped_heads_path("google/gemma-4-E4B-it", "en-de"))
    assert load_heads(argparse.Namespace(heads=en_de), TranslatorConfig(), PromptConfig(target_lang="de"))
    with pytest.raises(HeadsFileError, match="heads file is for en-de, but the run translates en-it"):
        load_heads(argparse.Namespace(heads=en_de), TranslatorConfig(), PromptConfig(target_lang="it"))
    with pytest.raises(ValueError, match="unsupported language 'xx'"):
        PromptConfig(target_lang="xx")
