"""alignatt_eval.analysis.gate_audit: which held-back words came out the same later, and which changed."""
import json

import pytest

from alignatt_eval.analysis.gate_audit import audit, held_back, main


def step(written, draft, stop="", quota=None, skipped=False, source_ms=850.0, n_committed=0, n_drafted=None):
    """One line of the timed agent's step log; `n_drafted`: how many of the written units came from the draft (the
    rest finished a committed sentence); None: a log from before that was recorded."""
    report = {"draft": draft, "draft_skipped": skipped, "stop": stop, "quota": quota, "written": written,
              "n_committed": n_committed}
    if n_drafted is not None:
        report["n_drafted_units"] = n_drafted
    return {"source_ms": source_ms, "written": written, "step": report}


TALK = [
    step("", ""),  # nothing heard yet: no draft
    step("Ich bin", " Ich bin Sarah", stop="' Sarah' looks at unit 4"),  # held "Sarah": it comes next anyway
    step("Sarah Papi aus", " Sarah Papi aus Paris", stop="' Paris' looks at unit 9"),  # "Paris" became "Trient"
    step("", " Sarah Papi aus Paris", stop="' Paris' looks at unit 9", skipped=True),  # the same draft: not again
    step("", " Trie"),  # a word cut at the draft's end, not the gate: "other", and "Trient" begins with it
    {"source_ms": 4250.0, "written": "Trient.", "step": None},  # the final pass at the end of the talk
]
PREDICTION = "Ich bin Sarah Papi aus Trient."


def test_held_back_words_are_compared_with_what_came_there():
    decisions = held_back(TALK, PREDICTION, False, "alignatt")
    assert [(d.reason, d.draft_unit, d.final_unit, d.changed) for d in decisions] == [
        ("policy", "sarah", "sarah", False), ("policy", "paris", "trient", True), ("other", "trie", "trient", False)]


def test_the_reason_follows_the_policy():
    # The step log records the gate's verdict under every policy; under wait-k the quota is the reason.
    talk = [step("Ich", " Ich bin Sarah", stop="' bin' looks at unit 3", quota=1),
            step("bin", " bin Sarah", stop="' Sarah' looks at unit 4", quota=2)]
    reasons = [d.reason for d in held_back(talk, "Ich bin Sarah", False, "wait-k1")]
    assert reasons == ["policy", "other"]  # the second step could have written two units and wrote one
    assert [d.reason for d in held_back(talk, "Ich bin Sarah", False, "local-agreement")] == ["policy", "policy"]
    # Per character: 是 was held back, then 们 came.
    assert held_back([step("我", "我是")], "我们", True, "alignatt")[0].changed


def test_a_step_that_also_finished_a_sentence_is_read_after_its_final_pass():
    # "Danke." finished the committed sentence, then the draft of the next one wrote "Ich" and held back "bin".
    talk = [step("Danke. Ich", " Ich bin", stop="' bin' looks at unit 2", n_committed=1, n_drafted=1)]
    assert [(d.draft_unit, d.final_unit) for d in held_back(talk, "Danke. Ich bin", False, "alignatt")] == [
        ("bin", "bin")]
    old_log = [step("Danke. Ich", " Ich bin", stop="' bin' looks at unit 2", n_committed=1)]
    assert held_back(old_log, "Danke. Ich bin", False, "alignatt") == held_back(talk, "Danke. Ich bin", False,
                                                                                 "alignatt")
    # The final pass ends in the word the next draft starts with, and nothing of the draft was written.
    talk = [step("Danke.", " Danke schön", stop="' Danke' looks at unit 3", n_committed=1, n_drafted=0)]
    (decision,) = held_back(talk, "Danke. Danke schön", False, "alignatt")
    assert (decision.draft_unit, decision.final_unit, decision.changed) == ("danke", "danke", False)


def test_only_a_cut_last_word_matches_a_longer_one():
    talk = [step("", " direkt Refer", stop="' direkt' looks at unit 5"), step("direkte", " direkte Refer")]
    first, second = held_back(talk, "direkte Referenzen", False, "alignatt")
    assert first.changed  # "direkt" is a whole word of the draft: "direkte" came instead
    assert not second.changed  # "Refer", cut where the draft ended, began "Referenzen"


def write_folder(root, name, policy, talks):
    folder = root / name
    for i, (steps, prediction) in enumerate(talks):
        talk = folder / "talks" / f"talk{i}"
        talk.mkdir(parents=True)
        (talk / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps), encoding="utf-8")
        (talk / "instances.log").write_text(json.dumps({"index": 0, "prediction": prediction}) + "\n",
                                            encoding="utf-8")
    (root / f"{name}.json").write_text(json.dumps({"run": name, "lang": "de", "policy": policy}), encoding="utf-8")
    return folder


def test_audit_counts_over_talks_and_the_command_prints_them(tmp_path, capsys):
    folder = write_folder(tmp_path, "de.low.alignatt", "alignatt", [(TALK, PREDICTION), (TALK, PREDICTION)])
    (folder / "talks" / "talk9.partial").mkdir()  # an unfinished talk of a resumable run is not read
    row = audit(folder)
    assert (row["held_back"], row["changed"], row["policy_held"], row["policy_changed"]) == (6, 2, 4, 2)
    assert (row["other_held"], row["other_changed"]) == (2, 0)
    main([str(folder)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split("\t") == ["de.low.alignatt", "alignatt", "6", "0.33", "4", "0.50", "2", "0.00"]
    with pytest.raises(FileNotFoundError, match="not a scored result folder"):
        audit(tmp_path / "missing")
