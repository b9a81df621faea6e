"""Greedy generation settings shared by every model the cascade runs (the ASR and the translator): which
decoding path "auto" means, compiling generate()'s decode step, and the transformers names that moved."""
from __future__ import annotations

import copy

import torch
import transformers
from packaging.version import Version
from transformers import CompileConfig, GenerationConfig

# What a failed compilation raises (inductor/triton errors arrive wrapped as BackendCompilerFailed; a
# fullgraph recompile past dynamo's limit as FailOnRecompileLimitHit).
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)
# generate()'s argument for a cache the caller owns: transformers 5.24 renamed past_key_values to cache (the old
# name warns on every run), and 5.23 knows only the old one.
CACHE_KWARG = "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def resolve_decode_mode(mode: str, device: torch.device) -> str:
    """"auto" means compiled on CUDA (CUDA graphs pay off) and eager elsewhere."""
    if mode == "auto":
        return "compiled" if device.type == "cuda" else "eager"
    return mode


def generation_with_compile(generation: GenerationConfig, compile: bool, backend: str, mode: str
                            ) -> GenerationConfig:
    """A copy of `generation` whose decode step generate() compiles (fullgraph, so that a graph break is an
    error rather than a silent slowdown), or never compiles."""
    generation = copy.deepcopy(generation)
    if compile:
        compile_config = CompileConfig(fullgraph=True, backend=backend, mode=mode)
        # generate() compiles only on accelerators unless told otherwise; the user asked for it here.
        compile_config._compile_all_devices = True
        generation.compile_config = compile_config
    else:
        generation.disable_compile = True
    return generation
