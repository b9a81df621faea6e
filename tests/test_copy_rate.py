"""The copy measure: written units that repeat the English source instead of translating it."""
import json

from alignatt_eval.analysis.copy_rate import CopyCount, count_copies, main


def test_english_words_count_names_numbers_and_kept_terms_do_not():
    source = "In short, the period was like Sarah's talk at ACL 2023."
    reference = "Kurz, die Zeit war wie Sarahs Vortrag auf der ACL 2023."
    count = count_copies("Es war in short, the period ACL 2023 .", source, reference, "de")
    assert count == CopyCount(n_units=9, n_copied=4)  # in, short, the, period; not ACL (kept), 2023 or "."
    assert count.share == 4 / 9
    assert count_copies("Kurz, die Zeit war wie", source, reference, "de").n_copied == 0
    # "war" is German here and an English word nowhere in the source: only source words count.
    assert count_copies("war", "was", "war", "de").n_copied == 0


def test_chinese_copies_are_latin_runs():
    source = "We propose a new method at ACL."
    reference = "我们在ACL上提出了一种新方法。"
    count = count_copies("我们在ACL上提出了new method", source, reference, "zh")
    assert count == CopyCount(n_units=10, n_copied=2)  # new, method; not ACL, not the characters


def test_rows_of_a_run_folder(tmp_path):
    data = tmp_path / "dev" / "per_talk"
    data.mkdir(parents=True)
    (data / "talkA.en").write_text("we had everything before us\n", encoding="utf-8")
    (data / "talkA.de").write_text("wir hatten alles vor uns\n", encoding="utf-8")
    talk = tmp_path / "row1" / "talks" / "talkA"
    talk.mkdir(parents=True)
    (talk / "instances.log").write_text(json.dumps({"prediction": "wir hatten everything before us"}) + "\n")
    out = tmp_path / "copies.tsv"
    main([str(tmp_path / "row1"), "--data", str(tmp_path / "dev"), "--lang", "de", "--out", str(out)])
    assert out.read_text().splitlines() == ["row\tunits\tcopied\tshare", "row1\t5\t3\t0.6000"]
