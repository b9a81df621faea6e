"""Scoring helpers of the eval runner: step-wise computation-aware times, commands, result rows, plots."""
import json

import pytest

from alignatt.cli.omnisteval import CA_KEY, omnisteval_command
from alignatt_eval.analysis import plot
from alignatt_eval.runners.run_dev import TSV_COLUMNS, write_row
from alignatt_eval.analysis.scoring import merge_hypotheses, step_ca_delays, xcomet_status


def test_ca_time_is_audio_read_plus_the_writing_step_s_compute():
    instance = {"delays": [850.0, 850.0, 2550.0], "prediction": "a b c"}
    steps = [{"source_ms": 850.0, "compute_ms": 120.0, "written": "a b"},
             {"source_ms": 1700.0, "compute_ms": 900.0, "written": ""},  # a slow step that wrote nothing
             {"source_ms": 2550.0, "compute_ms": 40.0, "written": "c"}]
    # Not SimulEval's `elapsed` (which would add the 900 ms of the silent step to "c"): only c's own step counts.
    assert step_ca_delays(instance, steps) == [970.0, 970.0, 2590.0]
    with pytest.raises(ValueError, match="no timed step"):
        step_ca_delays({"delays": [3400.0]}, steps)


def test_merge_keeps_the_simuleval_fields(tmp_path):
    talk = tmp_path / "t1"
    talk.mkdir()
    (talk / "instances.log").write_text(json.dumps({"index": 0, "prediction": "x", "delays": [1700.0],
                                                    "elapsed": [5000.0], "source": ["t1.wav"]}) + "\n")
    (talk / "steps.jsonl").write_text(json.dumps({"source_ms": 1700.0, "compute_ms": 10.0, "written": "x"}) + "\n")
    merge_hypotheses([talk], tmp_path / "h.jsonl")
    [merged] = map(json.loads, (tmp_path / "h.jsonl").read_text().splitlines())
    assert merged[CA_KEY] == [1710.0] and merged["elapsed"] == [5000.0] and merged["delays"] == [1700.0]


def test_omnisteval_command_per_language(tmp_path):
    de = omnisteval_command(tmp_path / "s.yaml", tmp_path / "r", tmp_path / "src", tmp_path / "h", "de", tmp_path)
    assert de[de.index("--bleu_tokenizer") + 1] == "13a" and "--word_level" in de and "--comet" not in de
    assert de[de.index("--emission_ca_key") + 1] == CA_KEY and de[de.index("--emission_cu_key") + 1] == "delays"
    zh = omnisteval_command(tmp_path / "s.yaml", tmp_path / "r", tmp_path / "src", tmp_path / "h", "zh", tmp_path,
                            comet_model="Unbabel/XCOMET-XL")
    assert zh[zh.index("--bleu_tokenizer") + 1] == "zh" and "--char_level" in zh
    assert zh[zh.index("--comet_model") + 1] == "Unbabel/XCOMET-XL"


def test_xcomet_without_weights_is_skipped_by_name():
    assert xcomet_status(None) == (False, "skipped: disabled")
    usable, note = xcomet_status("nobody/no-such-comet-model")
    assert not usable and note.startswith("skipped: no weights")


def row(run, policy, preset, bleu, yaal_ms, xcomet=None):
    values = {k: None for k in TSV_COLUMNS}
    values.update(run=run, lang="de", preset=preset, policy=policy, talks=["a"], bleu=bleu,
                  longyaal_cu_ms=yaal_ms, xcomet=xcomet)
    return values


def test_result_rows_replace_earlier_rows_of_the_same_run(tmp_path):
    write_row(tmp_path, row("de.low.alignatt", "alignatt", "low", 10.0, 1900.0))
    write_row(tmp_path, row("de.low.wait-k3", "wait-k3", "low", 8.0, 1500.0))
    write_row(tmp_path, row("de.low.alignatt", "alignatt", "low", 12.5, 1800.0))
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].split("\t") == list(TSV_COLUMNS)
    assert lines[1].split("\t")[TSV_COLUMNS.index("bleu")] == "12.50"
    assert json.loads((tmp_path / "de.low.alignatt.json").read_text())["bleu"] == 12.5


def test_plot_draws_bleu_and_xcomet_when_scored(tmp_path):
    paths = []
    for r in (row("de.low.alignatt", "alignatt", "low", 20.0, 1900.0, 0.8),
              row("de.high.alignatt", "alignatt", "high", 24.0, 3300.0, 0.85),
              row("de.low.wait-k3", "wait-k3", "low", 15.0, 1700.0),
              row("de.low.wait-k5", "wait-k5", "low", 17.0, 2400.0)):
        paths.append(tmp_path / f"{r['run']}.json")
        paths[-1].write_text(json.dumps(r))
    (tmp_path / "heads.json").write_text(json.dumps({"format": "alignatt-heads/1"}))  # not a row: left out
    assert len(plot.load_rows([str(p) for p in paths] + [str(tmp_path / "heads.json")])) == 4
    out = plot.main([str(p) for p in paths] + ["--out", str(tmp_path / "q.png")])
    assert out.stat().st_size > 1000
    assert plot.point_label(row("x", "wait-k5", "low", 1.0, 1.0)) == "k=5 low"
    assert plot.point_label(row("de.low.alignatt", "alignatt", "low", 1.0, 1.0)) == "low"
    published = row("de.alignatt-published", "alignatt", "low", 1.0, 1.0)
    assert plot.point_label(published) == "low published" and plot.family(published) == "alignatt published"


def test_segment_coverage_counts_segments_left_empty(tmp_path):
    from alignatt_eval.analysis.scoring import segment_coverage

    lines = [{"prediction": "Ich bin Sarah", "reference": "Ich bin Sarah Papi"},
             {"prediction": " ", "reference": "Heute spreche ich"},
             {"prediction": "über Übersetzung", "reference": "über Übersetzung"}]
    path = tmp_path / "instances.resegmented.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert segment_coverage(path, "de") == {"segments": 3, "empty_segments": 1, "empty_share": round(1 / 3, 4),
                                            "length_ratio": round(5 / 9, 4)}


def test_pareto_front_keeps_the_rows_nothing_beats():
    rows = [{"run": name, "longyaal_cu_ms": ms, "chrf": chrf} for name, ms, chrf in
            [("fast", 1000, 30.0), ("slow-better", 3000, 40.0), ("dominated", 3500, 39.0), ("tie", 3000, 40.0),
             ("middle", 2000, 35.0), ("worse-and-faster", 900, 20.0), ("unscored", 500, None)]]
    front = [r["run"] for r in plot.pareto_front(rows, "chrf")]
    # Equal points do not beat each other; a row without the metric is left out.
    assert front == ["worse-and-faster", "fast", "middle", "slow-better", "tie"]
