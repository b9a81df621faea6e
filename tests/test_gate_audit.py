"""eval.gate_audit: which held-back words came out the same later, and which changed."""
import json

import pytest

from eval.gate_audit import audit, held_back, main


def step(written, draft, stop="", quota=None, skipped=False, source_ms=850.0):
    """One line of the timed agent's step log; `written` is what the step wrote, all of it from the draft."""
    return {"source_ms": source_ms, "written": written,
            "step": {"draft": draft, "draft_skipped": skipped, "stop": stop, "quota": quota, "written": written}}


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
    assert held_back([step("我", "我是")], "我们", True, "alignatt")[0].changed  # per character: 是, then 们 came


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
