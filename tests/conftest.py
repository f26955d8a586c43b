"""Shared fixtures: a tiny random LLaMA with a tiny byte-level BPE tokenizer, built in the test;
fresh databases on SQLite and on a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from judge.models import BUILTIN_GGUF_NAME
from tests.postgres import PostgresServer, PostgresUnavailable, unavailable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_CORPUS = [
    "Below are two responses for a given task. The task is defined by the Instruction.",
    "Evaluate the responses and generate a reference answer for the task.",
    "### Instruction:\n### Input:\n### Response 1:\n### Response 2:\n### Evaluation:\n",
    "1\n\n### Reason: Response 1 is better.\n\n### Reference: The answer is 42.\n",
    "2\n\n### Reason: Response 2 is better.\n\n### Reference: Paris.\n",
    "Tie\n\n### Reason: Both are equally good.\n\n### Reference: Yes.\n",
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Response:\n",
    "What is the capital of France? Add 2 and 3. Translate hello into German. Hallo.",
    "The quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9.",
]


def build_tiny_llama(path: Path, vocab_size: int = 384, seed: int = 0) -> Path:
    """Save a tiny random LlamaForCausalLM and its tokenizer to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Two threads collapse under contention on the 2-core CI machine."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaMA exported to an f16 GGUF."""
    from judge.export import export_gguf

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny.F16.gguf"
    export_gguf(tiny_llama, out, "f16")
    return out


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA}, absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | str]:
    """One throw-away PostgreSQL cluster for the session, started on first use; or why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield "psycopg is not installed: pip install -e '.[postgres]'"
        return
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        yield str(exc)
        return
    try:
        yield server
    finally:
        server.stop()


class NewDatabase:
    """Makes fresh, empty databases on one backend: `new_database_url("agent")` is a URL."""

    def __init__(self, backend: str, make: Callable[[str], str]) -> None:
        self.backend, self._make = backend, make

    def __call__(self, name: str) -> str:
        return self._make(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> NewDatabase:
    """Fresh databases on SQLite, then on the session's PostgreSQL server: a test taking this
    fixture runs on both."""
    if request.param == "sqlite":
        return NewDatabase("sqlite", lambda name: f"sqlite:///{tmp_path / name}.sqlite")
    server = request.getfixturevalue("postgres_server")
    if isinstance(server, str):
        unavailable(server)
    return NewDatabase("postgresql", lambda _name: server.new_database())


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PANDALM_HOME whose builtin GGUF is a few bytes (nothing here loads it)."""
    home = tmp_path / "source-home"
    (home / "models").mkdir(parents=True)
    (home / "models" / BUILTIN_GGUF_NAME).write_bytes(b"GGUF fake")
    monkeypatch.setenv("PANDALM_HOME", str(home))
    return home
