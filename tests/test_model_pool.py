"""Cascades built around one ModelPool share its models and translate exactly as cascades that load their own."""
import argparse

import numpy as np
import pytest
import soundfile

from agent_fixtures import SPEECH_DIR, save_tiny_checkpoints
from alignatt.factory import add_arguments, build_cascade
from alignatt.model_pool import ModelPool

pytestmark = pytest.mark.slow  # two cascades on a talk: about 30 s


def parse(flags):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(flags)


def translate(cascade, audio: np.ndarray, rate: int) -> list[str]:
    units = []
    for start in range(0, len(audio), rate):
        units += cascade.push(audio[start:start + rate], rate)
    return units + cascade.finish()


def test_cascades_share_the_pool_s_models_and_translate_alike(tmp_path):
    checkpoints = save_tiny_checkpoints(tmp_path)
    common = [*checkpoints.agent_flags(), "--mt-max-draft-tokens", "4", "--mt-max-final-tokens", "8",
              "--qwen3-max-new-tokens", "6"]
    audio, rate = soundfile.read(SPEECH_DIR / "simuleval_test.wav", dtype="float32")
    audio = audio[: rate * 4]
    pool = ModelPool()
    wait_k = build_cascade(parse([*common, "--policy", "wait-k", "--wait-k", "1"]), pool)
    alignatt = build_cascade(parse([*common, "--policy", "alignatt", "--source-margin-ms", "300"]), pool)
    assert [key[0] for key in pool.loads] == ["translator", "decoder", "asr"]  # the second cascade loaded nothing
    assert alignatt.translator.model is wait_k.translator.model and alignatt.asr is wait_k.asr
    assert alignatt.translator.decoder is wait_k.translator.decoder
    assert alignatt.policy is not wait_k.policy

    # Another decode path or dtype is another model: the pool loads it rather than hand back the wrong one.
    build_cascade(parse([*common, "--mt-dtype", "bfloat16"]), pool)
    assert [key[0] for key in pool.loads] == ["translator", "decoder", "asr", "translator", "decoder"]

    alone = build_cascade(parse([*common, "--policy", "alignatt", "--source-margin-ms", "300"]))
    assert alone.translator.model is not alignatt.translator.model
    shared = translate(alignatt, audio, rate)
    assert shared and shared == translate(alone, audio, rate)
