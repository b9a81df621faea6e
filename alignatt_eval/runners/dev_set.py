"""A dev set in the MCIF layout: one segment YAML for all talks, one text file per language, talks split out.

    ROOT/audio-segments.yaml   [{wav, offset, duration, ...}, ...] (seconds), talks one after the other
    ROOT/{en,de,it,zh}.txt     one line per segment, in YAML order
    ROOT/per_talk/NAME.{lang}  the same lines, one file per talk (NAME = the wav's stem)

The real MCIF dev set (data/mcif_dev, text only) has no audio offline; `alignatt_eval.runners.synth_talks` writes a synthetic
one in the same layout with its wavs under ROOT/wav/.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

MCIF_DEV = Path(__file__).resolve().parents[2] / "data" / "mcif_dev"
SEGMENTS_FILE = "audio-segments.yaml"


@dataclass(frozen=True)
class Segment:
    wav: str  # file name of the talk's wav, as in the YAML
    offset_s: float
    duration_s: float
    line: int  # index of the segment's line in the per-language text files

    @property
    def talk(self) -> str:
        return Path(self.wav).stem


@dataclass(frozen=True)
class DevSet:
    root: Path
    segments: tuple[Segment, ...]

    @classmethod
    def load(cls, root: str | Path = MCIF_DEV) -> "DevSet":
        root = Path(root)
        entries = yaml.safe_load((root / SEGMENTS_FILE).read_text(encoding="utf-8"))
        segments = tuple(Segment(e["wav"], float(e["offset"]), float(e["duration"]), i)
                         for i, e in enumerate(entries))
        return cls(root, segments)

    def talks(self) -> list[str]:
        """Talk names (wav stems) in YAML order."""
        return list(dict.fromkeys(s.talk for s in self.segments))

    def talk_segments(self, talk: str) -> list[Segment]:
        found = [s for s in self.segments if s.talk == talk]
        if not found:
            raise ValueError(f"talk {talk!r} is not in {self.root / SEGMENTS_FILE}")
        return found

    def lines(self, lang: str) -> list[str]:
        """The per-segment lines of `lang`, checked against the segment count."""
        path = self.root / f"{lang}.txt"
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) != len(self.segments):
            raise ValueError(f"{path} has {len(lines)} lines for {len(self.segments)} segments")
        return lines

    def talk_lines(self, talk: str, lang: str) -> list[str]:
        return [self.lines(lang)[s.line] for s in self.talk_segments(talk)]


def segment_entry(wav: str, offset_s: float, duration_s: float) -> dict:
    """One YAML entry, in the field order of the official segmentation."""
    return {"duration": round(duration_s, 3), "offset": round(offset_s, 3), "speaker_id": "1", "wav": wav}


def write_segments(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(f"- {{duration: {e['duration']}, offset: {e['offset']}, speaker_id: '1', "
                            f"wav: {e['wav']}}}\n" for e in entries), encoding="utf-8")
