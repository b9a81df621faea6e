"""The heads file: which (layer, head) pairs align target tokens to source words, as data.

Format (JSON, `format` = "alignatt-heads/1"):
  model: {id, revision, num_hidden_layers, num_attention_heads}   the model the scores belong to
  direction: "en-de"
  top_k: how many of the ranked heads the agent uses
  query_row: "own" | "predicting"   which attention query row the scores judged target token t by:
      "own" = the row at t's own position (the query computed when t is fed back in; the published
      Gemma-4 heads), "predicting" = the row that predicts t (position t - 1). Heads are meant to be used
      with the convention they were scored on. A file without the key is read as "predicting" (what every
      calibration run of this project wrote before the key existed), with a warning.
  heads: [{layer, head, score}, ...] ranked best first; score = TS(l, h), null when unknown
  calibration: free-form metadata (data, sizes, date, stability checks, provenance)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from alignatt.mt.capture import HeadRef

logger = logging.getLogger(__name__)

FORMAT = "alignatt-heads/1"
SHIPPED_DIR = "mt/heads_files"
QUERY_ROWS = ("own", "predicting")
DEFAULT_QUERY_ROW = "own"  # new files: the published heads' convention
LEGACY_QUERY_ROW = "predicting"  # files written before the key existed were all scored on predicting rows
_ROW_OFFSET = {"own": 0, "predicting": -1}


class HeadsFileError(ValueError):
    """A heads file that cannot be read or does not fit the loaded model."""


def check_query_row(query_row: str) -> None:
    """Raise HeadsFileError unless `query_row` names one of QUERY_ROWS."""
    if query_row not in QUERY_ROWS:
        raise HeadsFileError(f"query_row must be one of {', '.join(QUERY_ROWS)}, got {query_row!r}")


def query_row_position(token_position: int, query_row: str) -> int:
    """Position of the attention row that judges the token at `token_position` under `query_row`."""
    check_query_row(query_row)
    return token_position + _ROW_OFFSET[query_row]


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    score: float | None = None

    @property
    def ref(self) -> HeadRef:
        return HeadRef(self.layer, self.head)


@dataclass(frozen=True)
class HeadsFile:
    model_id: str
    direction: str
    heads: tuple[HeadScore, ...]
    num_hidden_layers: int
    num_attention_heads: int
    top_k: int = 4
    revision: str | None = None
    calibration: dict = field(default_factory=dict)
    query_row: str = DEFAULT_QUERY_ROW

    def __post_init__(self):
        check_query_row(self.query_row)
        if not self.heads:
            raise HeadsFileError("a heads file needs at least one head")
        if not 1 <= self.top_k <= len(self.heads):
            raise HeadsFileError(f"top_k={self.top_k} but the file ranks {len(self.heads)} heads")
        if len({(h.layer, h.head) for h in self.heads}) != len(self.heads):
            raise HeadsFileError("a head is listed twice")

    def selected(self) -> tuple[HeadRef, ...]:
        """The top_k heads the policy uses."""
        return tuple(h.ref for h in self.heads[: self.top_k])

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": {"id": self.model_id, "revision": self.revision, "num_hidden_layers": self.num_hidden_layers,
                      "num_attention_heads": self.num_attention_heads},
            "direction": self.direction,
            "top_k": self.top_k,
            "query_row": self.query_row,
            "heads": [{"layer": h.layer, "head": h.head, "score": h.score} for h in self.heads],
            "calibration": self.calibration,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict) -> "HeadsFile":
        if data.get("format") != FORMAT:
            raise HeadsFileError(f"not a heads file: format is {data.get('format')!r}, expected {FORMAT!r}")
        try:
            model = data["model"]
            heads = tuple(HeadScore(int(h["layer"]), int(h["head"]),
                                    None if h.get("score") is None else float(h["score"]))
                          for h in data["heads"])
            return cls(model_id=model["id"], revision=model.get("revision"), direction=data["direction"],
                       heads=heads, num_hidden_layers=int(model["num_hidden_layers"]),
                       num_attention_heads=int(model["num_attention_heads"]), top_k=int(data.get("top_k", 4)),
                       calibration=dict(data.get("calibration", {})),
                       query_row=_declared_query_row(data, f"{model['id']} {data['direction']}"))
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, HeadsFileError):
                raise
            raise HeadsFileError(f"malformed heads file: {err!r}") from err

    @classmethod
    def load(cls, path: str | Path) -> "HeadsFile":
        path = Path(path)
        if not path.is_file():
            raise HeadsFileError(f"heads file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise HeadsFileError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(data)

    def calibrated_gguf_file(self) -> str | None:
        """The GGUF file the heads were calibrated on, as alignatt.calibration.select_heads records it (None: not a GGUF)."""
        return (self.calibration.get("model_loading") or {}).get("gguf_file")

    def check_fits(self, model_config, model_id: str | None = None, gguf_file: str | None = None) -> None:
        """Raise HeadsFileError unless every head exists in a model with this config; warn when the model is not
        the one the heads were calibrated on (a GGUF file of the calibrated name is, wherever its folder lies)."""
        text = model_config.get_text_config()
        layers, n_heads = int(text.num_hidden_layers), int(text.num_attention_heads)
        if (layers, n_heads) != (self.num_hidden_layers, self.num_attention_heads):
            raise HeadsFileError(
                f"heads file is for {self.model_id} ({self.num_hidden_layers} layers x {self.num_attention_heads} "
                f"heads) but the loaded model has {layers} layers x {n_heads} heads")
        bad = [h for h in self.heads if not (0 <= h.layer < layers and 0 <= h.head < n_heads)]
        if bad:
            raise HeadsFileError(f"heads outside the model: {bad}")
        same_gguf = gguf_file is not None and gguf_file == self.calibrated_gguf_file()
        if model_id is not None and model_id != self.model_id and not same_gguf:
            logger.warning("heads calibrated on %s are used with %s", self.model_id, model_id)


def _declared_query_row(data: dict, name: str) -> str:
    """The file's query_row; LEGACY_QUERY_ROW, with a warning, for files written before the key existed."""
    if "query_row" in data:
        return data["query_row"]
    logger.warning("heads file for %s has no query_row: read as %r, the rows every earlier calibration run "
                   "scored; add \"query_row\" to the file to declare it", name, LEGACY_QUERY_ROW)
    return LEGACY_QUERY_ROW


def shipped_heads_path(model_id: str, direction: str) -> Path:
    """Path of a heads file shipped with the package, e.g. ('google/gemma-4-E4B-it', 'en-de')."""
    name = f"{model_id.split('/')[-1]}.{direction}.json"
    path = Path(str(resources.files("alignatt").joinpath(SHIPPED_DIR, name)))
    if not path.is_file():
        raise HeadsFileError(f"no shipped heads file for {model_id} {direction}; calibrate one "
                             f"(python -m alignatt.calibration.select_heads) and pass its path")
    return path
