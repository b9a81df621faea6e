"""Did holding a word back pay? An audit of every step where a policy wrote less than its draft offered.

At such a step the draft's next unit (the first one not written: the token the AlignAtt gate stopped, the first
unit past wait-k's quota or LocalAgreement's agreement, or an incomplete last word) is compared with the unit
the talk's output finally holds at that position:
- "changed": another word came there. Writing the draft's word would have put a word there that the system,
  with more audio, no longer chose: the hold kept a guess out of the text;
- "same": the same word came later. The hold cost latency and kept nothing out.
Words are compared case-folded, letters and digits only; the draft's last word, possibly cut inside, matches
any word it begins. Steps that reused the last draft are not counted again. A step where the gate stopped a
token counts as the gate's hold even where a guard cut the text before that token. This is a proxy for "was
the stop right": a changed word may also follow from a prefix that changed before it.

    python -m alignatt_eval.analysis.gate_audit results/curves/heldout_first/de.low.aligned-b1.cut ... [--out FILE.tsv]

Reads each result folder's `talks/*/steps.jsonl` (the timed agent's step log) and `talks/*/instances.log`.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alignatt.policy.guards import unit_key
from alignatt.text_units import is_char_level, split_units
from alignatt_eval.analysis.compare import read_row


@dataclass(frozen=True)
class HeldBack:
    step_ms: float  # audio read at the step
    reason: str  # policy: the policy's own decision (see policy_held); other: a cut word at the draft's end, guards
    draft_unit: str  # the draft's first unit that was not written
    final_unit: str  # what the output holds at that position ("" past its end)
    draft_unit_is_last: bool  # the draft's last unit, which generation may have cut inside the word

    @property
    def changed(self) -> bool:
        if self.draft_unit_is_last:
            return not (self.final_unit and self.final_unit.startswith(self.draft_unit))
        return self.final_unit != self.draft_unit


def unit_keys(text: str, char_level: bool) -> list[str]:
    """The units of `text` as the guards compare them; units without letters or digits (a lone comma) are left
    out."""
    keys = (unit_key(unit) for unit in split_units(text, char_level))
    return [key for key in keys if key]


def policy_held(policy: str, step: dict, n_units_from_draft: int) -> bool:
    """Whether the policy's own rule held the unit back: the AlignAtt gate stopped a token, wait-k's quota was
    reached, or (LocalAgreement-2, which holds all it does by its agreement) always. The step log records the
    gate's verdict under every policy, so it is read as the reason under AlignAtt only."""
    if policy == "alignatt":
        return bool(step["stop"])
    if policy.startswith("wait-k"):
        return step["quota"] == n_units_from_draft
    return True


def drafted_units(step: dict, char_level: bool) -> list[str] | None:
    """The units the step wrote from its draft: the end of `written`, after any final pass of a committed
    sentence. Logs from before `n_drafted_units` was recorded give the longest end of `written` that starts the
    draft (None when the step committed nothing and `written` does not start the draft)."""
    written = split_units(step["written"], char_level)
    if "n_drafted_units" in step:
        return written[len(written) - step["n_drafted_units"]:]
    folded_written = [u.casefold() for u in written]
    folded_draft = [u.casefold() for u in split_units(step["draft"], char_level)]
    if not step["n_committed"]:
        return written if folded_draft[:len(written)] == folded_written else None
    for k in range(min(len(written), len(folded_draft)), -1, -1):
        if folded_written[len(written) - k:] == folded_draft[:k]:
            return written[len(written) - k:]
    return None


def held_back(steps: list[dict], prediction: str, char_level: bool, policy: str) -> list[HeldBack]:
    """Every drafted step of one talk whose draft offered a unit beyond what the step wrote from it."""
    final = unit_keys(prediction, char_level)
    n_written, decisions = 0, []
    for line in steps:
        n_written += len(unit_keys(line["written"], char_level))
        step = line.get("step")
        if not step or not step["draft"] or step["draft_skipped"]:
            continue
        from_draft = drafted_units(step, char_level)
        if from_draft is None:
            continue  # an old log whose written text is not the draft's start
        draft = unit_keys(step["draft"], char_level)
        n_from_draft = len(unit_keys(" ".join(from_draft), char_level))
        if len(draft) <= n_from_draft:
            continue  # the step wrote all the draft offered
        reason = "policy" if policy_held(policy, step, len(from_draft)) else "other"
        final_unit = final[n_written] if n_written < len(final) else ""
        decisions.append(HeldBack(line["source_ms"], reason, draft[n_from_draft], final_unit,
                                  draft_unit_is_last=n_from_draft == len(draft) - 1))
    return decisions


def talk_logs(folder: Path) -> list[tuple[list[dict], str]]:
    """(steps, prediction) of every talk of a result folder."""
    talks = []
    for talk in sorted(p for p in (folder / "talks").iterdir() if p.is_dir() and not p.name.endswith(".partial")):
        steps = [json.loads(line) for line in (talk / "steps.jsonl").read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        instances = [json.loads(line) for line in (talk / "instances.log").read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        talks.append((steps, " ".join(instance["prediction"] for instance in instances)))
    return talks


def audit(folder: Path) -> dict:
    """Counts over a result folder: held-back units by reason, and how many of them changed later."""
    result_row = read_row(folder, Path("talks"))
    char_level = is_char_level(result_row["lang"])
    decisions = [d for steps, prediction in talk_logs(folder)
                 for d in held_back(steps, prediction, char_level, result_row["policy"])]
    held, changed = Counter(d.reason for d in decisions), Counter(d.reason for d in decisions if d.changed)
    row = {"run": folder.name, "policy": result_row["policy"], "held_back": len(decisions),
           "changed": sum(changed.values())}
    for reason in ("policy", "other"):
        row[f"{reason}_held"], row[f"{reason}_changed"] = held[reason], changed[reason]
    return row


def share(changed: int, held: int) -> str:
    return f"{changed / held:.2f}" if held else "-"


def format_table(rows: list[dict]) -> str:
    lines = ["run\tpolicy\theld_back\tchanged_share\tpolicy_held\tpolicy_changed_share\tother_held"
             "\tother_changed_share"]
    for r in rows:
        lines.append("\t".join([r["run"], r["policy"], str(r["held_back"]), share(r["changed"], r["held_back"])] + [
            f"{r[f'{reason}_held']}\t{share(r[f'{reason}_changed'], r[f'{reason}_held'])}"
            for reason in ("policy", "other")]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="result folders of alignatt_eval.runners.run_dev / alignatt_eval.runners.sweep")
    parser.add_argument("--out", type=Path, help="also write the table here (TSV)")
    args = parser.parse_args(argv)
    table = format_table([audit(folder) for folder in args.folders])
    print(table, end="")
    if args.out:
        args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
