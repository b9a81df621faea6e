"""The trace command a researcher runs to debug the policy, as a subprocess on a saved tiny model."""
import subprocess
import sys

import pytest

from test_translator import heads_file_for, save_tiny_checkpoint
from tiny_models import build_gemma4_conditional

pytestmark = pytest.mark.slow  # `python -m alignatt.cli.trace` subprocesses


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, gemma_tok):
    model = build_gemma4_conditional(vocab_size=len(gemma_tok))
    directory = tmp_path_factory.mktemp("trace")
    path = save_tiny_checkpoint(directory / "tiny", model, gemma_tok)
    heads_file_for(model).save(directory / "heads.json")
    return path, str(directory / "heads.json")


def run_trace(*args):
    return subprocess.run([sys.executable, "-m", "alignatt.cli.trace", *args], capture_output=True, text=True, timeout=300)


def test_trace_prints_tokens_heads_and_verdicts(checkpoint):
    model, heads = checkpoint
    done = run_trace("--model-id", model, "--heads", heads, "--device", "cpu", "--source",
                     "We propose a new method", "--accessible", "2", "--prefix", "Wir", "--border-units", "0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "0:We 1:propose 2:~a 3:~new 4:~method" in out
    assert "heads: L2H0, L5H1, L1H3, L4H2" in out
    rows = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert rows and all(("accept" in r) or ("STOP" in r) or ("after stop" in r) for r in rows)
    assert "accepted text: 'Wir' + " in out


def test_trace_reports_a_missing_heads_file(checkpoint, tmp_path):
    model, _ = checkpoint
    done = run_trace("--model-id", model, "--heads", str(tmp_path / "none.json"), "--source", "Hello")
    assert done.returncode == 2 and "heads file not found" in done.stderr
