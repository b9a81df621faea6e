"""alignatt_eval.analysis.compare: paired significance between result rows, on the segments OmniSTEval scored."""
import json
import random

import pytest
from sacrebleu.metrics import BLEU, CHRF

from alignatt_eval.analysis.compare import compare, load_pooled, load_run, main

WORDS = ("der die das Haus Baum geht schnell heute wir sehen einen großen Hund und eine kleine Katze im Garten "
         "morgen fährt sie nach Berlin weil es dort regnet").split()


def write_run(root, name, lang, predictions, references, longyaal_ms=1500.0):
    folder = root / name
    (folder / "omnisteval").mkdir(parents=True)
    lines = [json.dumps({"index": i, "prediction": p, "reference": r}, ensure_ascii=False)
             for i, (p, r) in enumerate(zip(predictions, references))]
    (folder / "omnisteval" / "instances.resegmented.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / f"{name}.json").write_text(json.dumps({"run": name, "lang": lang, "longyaal_cu_ms": longyaal_ms}),
                                       encoding="utf-8")
    return folder


def sentences(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))) for _ in range(n)]


def damaged(texts, seed, keep):
    """Each word kept with probability `keep`, otherwise replaced by a random word."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() < keep else rng.choice(WORDS) for w in t.split()) for t in texts]


def by_name(comparisons, metric):
    return {c.name: c for c in comparisons if c.metric == metric}


def test_scores_are_the_corpus_scores_and_a_clear_gain_is_significant(tmp_path):
    references = sentences(60, seed=1)
    weak, strong = damaged(references, 2, keep=0.3), damaged(references, 3, keep=0.9)
    alike = weak[:50] + damaged(references[50:], 7, keep=0.3)  # 10 segments differ, as badly
    runs = [load_run(write_run(tmp_path, name, "de", predictions, references))
            for name, predictions in (("weak", weak), ("strong", strong), ("alike", alike))]
    comparisons = compare(runs, samples=200)
    bleu, chrf = by_name(comparisons, "BLEU"), by_name(comparisons, "chrF")
    assert bleu["strong"].score == pytest.approx(BLEU().corpus_score(strong, [references]).score)
    assert chrf["weak"].score == pytest.approx(CHRF().corpus_score(weak, [references]).score)
    assert bleu["weak"].p_value is None  # the baseline
    assert bleu["strong"].p_value < 0.05 and chrf["strong"].p_value < 0.05
    assert bleu["alike"].p_value > 0.05 and chrf["alike"].p_value > 0.05  # no evidence of a difference
    assert bleu["strong"].ci_95 > 0 and bleu["strong"].longyaal_cu_ms == 1500.0


def test_chinese_is_scored_with_the_zh_tokeniser(tmp_path):
    references = ["我们今天去北京看看天气", "他们明天在家里学习中文", "这是一个很好的问题"] * 10
    predictions = ["我们今天去北京看天气", "他们明天在家学习中文", "这是很好的问题"] * 10
    runs = [load_run(write_run(tmp_path, name, "zh", predictions, references)) for name in ("a", "b")]
    bleu = by_name(compare(runs, samples=50), "BLEU")
    assert bleu["a"].score == pytest.approx(BLEU(tokenize="zh").corpus_score(predictions, [references]).score)
    assert bleu["a"].score != pytest.approx(BLEU().corpus_score(predictions, [references]).score)


def test_runs_on_other_segments_or_unscored_folders_are_refused(tmp_path):
    base = write_run(tmp_path, "base", "de", ["a b"], ["a b c"])
    other = write_run(tmp_path, "other", "de", ["a b"], ["x y z"])
    with pytest.raises(ValueError, match="different references"):
        compare([load_run(base), load_run(other)])
    with pytest.raises(FileNotFoundError, match="scored result folder"):
        load_run(tmp_path / "missing")


def test_the_command_prints_and_writes_the_table(tmp_path, capsys):
    references = sentences(20, seed=4)
    base = write_run(tmp_path, "base", "de", damaged(references, 5, keep=0.5), references)
    system = write_run(tmp_path, "system", "de", damaged(references, 6, keep=0.8), references)
    out = tmp_path / "table.tsv"
    main([str(base), str(system), "--samples", "50", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed == out.read_text(encoding="utf-8")
    rows = [line.split("\t") for line in printed.splitlines()]
    assert rows[0] == ["run", "metric", "score", "ci_95", "p_value", "longyaal_cu_ms"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("base", "BLEU"), ("system", "BLEU"), ("base", "chrF"),
                                                ("system", "chrF")]
    assert rows[1][4] == "(baseline)" and float(rows[2][4]) <= 1.0


def test_rows_of_several_talk_sets_are_pooled(tmp_path):
    first, second = sentences(10, seed=7), sentences(30, seed=8)
    a = write_run(tmp_path / "heldout", "x", "de", damaged(first, 9, keep=0.6), first, longyaal_ms=1000.0)
    b = write_run(tmp_path / "fresh", "x", "de", damaged(second, 10, keep=0.6), second, longyaal_ms=2000.0)
    pooled = load_pooled([a, b])
    assert pooled.references == first + second and len(pooled.predictions) == 40
    assert pooled.longyaal_cu_ms == pytest.approx(1750.0)  # weighted by segments: (10 * 1000 + 30 * 2000) / 40
    other = write_run(tmp_path / "fresh", "zh", "zh", second, second)
    with pytest.raises(ValueError, match="different languages"):
        load_pooled([a, other])


def test_rows_of_the_same_name_are_named_as_given(tmp_path, capsys):
    references = sentences(20, seed=11)
    for study in ("tune", "heldout"):
        write_run(tmp_path / study, "de.x", "de", damaged(references, 12, keep=0.7), references)
    main([str(tmp_path / "tune" / "de.x"), str(tmp_path / "heldout" / "de.x"), "--samples", "20"])
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()[1:3]]
    assert names == [str(tmp_path / "tune" / "de.x"), str(tmp_path / "heldout" / "de.x")]
