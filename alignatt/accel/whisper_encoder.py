"""Whisper's audio encoder in torch, built from a faster-whisper (CTranslate2) model directory.

On CPU the encoder is most of whisper's cost: faster-whisper base re-encodes a padded 30 s window at every step,
while the decoder and word alignment are cheap (measurements: docs/speed.md). The checkpoint stores float16
weights, which CTranslate2 quantises to int8 at load time. transformers' `WhisperEncoderLayer`s on the same weights
in bfloat16 use the CPU's native bf16 matrix units (AMX, AVX-512 BF16) where it has them.
Its output goes back to CTranslate2, whose `generate` and `align` accept an encoder output in place of features,
so the decoder, the timestamps and faster-whisper's decoding rules are unchanged.

CTranslate2's model.bin (format version 6) is a header followed by named arrays; only the encoder's are read.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ENCODER_PREFIX = "encoder/"
# CTranslate2's DataType enum: the float weights of a float32/float16 conversion, and the integer scalars (num_heads).
# An int8 conversion (1, with separate scales) or a bfloat16 one (5) is refused rather than misread.
_CT2_DTYPES = {0: np.float32, 2: np.int16, 3: np.int32, 4: np.float16}
_CT2_DTYPE_NAMES = {1: "int8", 5: "bfloat16"}
_SUPPORTED_VERSIONS = (5, 6)  # 5 and 6 share the layout read here
TORCH_DTYPES = {"torch-bf16": torch.bfloat16, "torch-fp32": torch.float32}


class _Reader:
    def __init__(self, handle):
        self.handle = handle

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.handle.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.handle.read(self.unpack("<H")).decode("utf-8").rstrip("\0")


def read_ct2_variables(model_bin: Path, prefix: str = ENCODER_PREFIX) -> dict[str, np.ndarray]:
    """The arrays of a CTranslate2 model.bin whose names start with `prefix` (others are skipped unread)."""
    variables = {}
    with open(model_bin, "rb") as handle:
        reader = _Reader(handle)
        version = reader.unpack("<I")
        if version not in _SUPPORTED_VERSIONS:
            raise ValueError(f"{model_bin}: CTranslate2 model format {version} is not supported "
                             f"(supported: {_SUPPORTED_VERSIONS})")
        reader.string()  # the spec's name, e.g. WhisperSpec
        reader.unpack("<I")  # the spec's revision
        for _ in range(reader.unpack("<I")):
            name = reader.string()
            shape = [reader.unpack("<I") for _ in range(reader.unpack("<B"))]
            dtype_id, n_bytes = reader.unpack("<B"), reader.unpack("<I")
            if not name.startswith(prefix):
                handle.seek(n_bytes, 1)
                continue
            if dtype_id not in _CT2_DTYPES:
                kind = _CT2_DTYPE_NAMES.get(dtype_id, f"dtype {dtype_id}")
                raise ValueError(f"{model_bin}: {name} is stored as {kind}; the torch encoder reads float16 or "
                                 f"float32 conversions only (use --whisper-encoder ctranslate2, or convert with "
                                 f"--quantization float16)")
            data = np.frombuffer(handle.read(n_bytes), dtype=_CT2_DTYPES[dtype_id])
            variables[name[len(prefix):]] = data.reshape(shape)
    return variables


def _layer_count(variables: dict[str, np.ndarray]) -> int:
    return len({name.split("/")[0] for name in variables if re.match(r"layer_\d+/", name)})


def encoder_config(variables: dict[str, np.ndarray]):
    """A transformers WhisperConfig for the encoder these arrays describe."""
    from transformers import WhisperConfig

    d_model, n_mels, _ = variables["conv1/weight"].shape
    return WhisperConfig(num_mel_bins=int(n_mels), d_model=int(d_model), encoder_layers=_layer_count(variables),
                         encoder_attention_heads=int(variables["num_heads"]),
                         encoder_ffn_dim=int(variables["layer_0/ffn/linear_0/weight"].shape[0]),
                         max_source_positions=int(variables["position_encodings/encodings"].shape[0]))


def encoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """transformers' WhisperEncoder parameter names for CTranslate2's encoder arrays. CTranslate2 fuses the
    query, key and value projections into one (whisper's key projection has no bias: its part is zero). Every
    array must be used: one the mapping does not know (a scale, another architecture's extra) would otherwise be
    silently ignored."""
    unread = set(variables) - {"num_heads"}

    def take(name: str) -> np.ndarray:
        unread.discard(name)
        return variables[name]

    state = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight",
             "conv2.bias": "conv2/bias", "embed_positions.weight": "position_encodings/encodings",
             "layer_norm.weight": "layer_norm/gamma", "layer_norm.bias": "layer_norm/beta"}
    tensors = {hf: _tensor(take(ct2)) for hf, ct2 in state.items()}
    for i in range(_layer_count(variables)):
        ct2, hf = f"layer_{i}/", f"layers.{i}."
        pairs = {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}
        for hf_norm, ct2_norm in pairs.items():
            tensors[f"{hf}{hf_norm}.weight"] = _tensor(take(f"{ct2}{ct2_norm}/gamma"))
            tensors[f"{hf}{hf_norm}.bias"] = _tensor(take(f"{ct2}{ct2_norm}/beta"))
        q, k, v = np.split(take(f"{ct2}self_attention/linear_0/weight"), 3)
        q_bias, k_bias, v_bias = np.split(take(f"{ct2}self_attention/linear_0/bias"), 3)
        if np.any(k_bias):
            raise ValueError(f"encoder layer {i}: a whisper key projection has no bias, this one has")
        for name, weight in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            tensors[f"{hf}self_attn.{name}.weight"] = _tensor(weight)
        tensors[f"{hf}self_attn.q_proj.bias"] = _tensor(q_bias)
        tensors[f"{hf}self_attn.v_proj.bias"] = _tensor(v_bias)
        for hf_linear, ct2_linear in (("self_attn.out_proj", "self_attention/linear_1"), ("fc1", "ffn/linear_0"),
                                      ("fc2", "ffn/linear_1")):
            tensors[f"{hf}{hf_linear}.weight"] = _tensor(take(f"{ct2}{ct2_linear}/weight"))
            tensors[f"{hf}{hf_linear}.bias"] = _tensor(take(f"{ct2}{ct2_linear}/bias"))
    if unread:
        raise ValueError(f"encoder arrays the torch encoder does not know: {sorted(unread)[:6]}; not a plain "
                         f"whisper encoder (use --whisper-encoder ctranslate2)")
    return tensors


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


@dataclass
class TorchWhisperEncoder:
    """transformers' WhisperEncoder with a faster-whisper checkpoint's weights, for inputs of any length up to
    whisper's 30 s: HF's forward insists on exactly 3000 frames, so the positions are sliced here instead (as
    CTranslate2 does), with its own modules and operations in the same order."""

    encoder: torch.nn.Module

    @classmethod
    def from_ct2_dir(cls, model_dir: str | Path, dtype: torch.dtype) -> TorchWhisperEncoder:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        variables = read_ct2_variables(Path(model_dir) / "model.bin")
        config = encoder_config(variables)
        config._attn_implementation = "sdpa"
        encoder = WhisperEncoder(config)
        encoder.load_state_dict(encoder_state_dict(variables), strict=True)
        return cls(encoder.to(dtype).eval())

    @torch.inference_mode()
    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Encoder states (batch, frames / 2, d_model) as float32 for log-mel `features` (batch, mels, frames)."""
        encoder = self.encoder
        frames = features.shape[-1]
        max_frames = 2 * encoder.embed_positions.num_embeddings
        if frames > max_frames or frames % 2:
            raise ValueError(f"whisper's encoder takes an even number of frames up to {max_frames}, got {frames}")
        x = torch.from_numpy(np.ascontiguousarray(features)).to(encoder.conv1.weight.dtype)
        x = torch.nn.functional.gelu(encoder.conv1(x))
        x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
        x = x + encoder.embed_positions.weight[:x.shape[1]]
        for layer in encoder.layers:
            x = layer(x, None)
        return encoder.layer_norm(x).float().numpy()


def torch_whisper_encoder(model_dir: str | Path, encoder: str) -> TorchWhisperEncoder:
    """The encoder `--whisper-encoder` names ("torch-bf16", "torch-fp32") for a faster-whisper model directory: the
    `torch_encoder` hook of `alignatt.asr.whisper.WhisperBackend.from_options`."""
    return TorchWhisperEncoder.from_ct2_dir(model_dir, TORCH_DTYPES[encoder])
