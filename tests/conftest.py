import pytest

from alignatt_eval.runners.offline_tokenizers import gemma_tokenizer, qwen_tokenizer


@pytest.fixture(scope="session")
def gemma_tok():
    return gemma_tokenizer(chat=True)


@pytest.fixture(scope="session")
def qwen_tok():
    return qwen_tokenizer()


@pytest.fixture(scope="session")
def failing_compile_backend():
    """A torch.compile backend that always fails, as a broken inductor/triton install would."""
    from torch._dynamo import register_backend

    def fail(graph_module, example_inputs):
        raise RuntimeError("this compiler always fails")

    register_backend(fail, name="alignatt_test_failing")
    return "alignatt_test_failing"
