import pytest

from eval.offline_tokenizers import gemma_tokenizer, qwen_tokenizer


@pytest.fixture(scope="session")
def gemma_tok():
    return gemma_tokenizer(chat=True)


@pytest.fixture(scope="session")
def qwen_tok():
    return qwen_tokenizer()
