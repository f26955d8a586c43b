"""Tokenizer-independent helpers shared by the backends."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

# Every judge prompt ends with this line; verdict tokens are read right after it.
PROMPT_END = "### Evaluation:\n"


def continuation_ids(tokenize: Callable[[str], list[int]], continuation: str) -> list[int]:
    """Tokens of `continuation` as they follow the prompt's last line, not as a fresh text.

    SentencePiece tokenizers give `1` a different token at the start of a text than after a
    newline, so the continuation is cut out of the tokenized `PROMPT_END + continuation`.
    """
    head = tokenize(PROMPT_END)
    full = tokenize(PROMPT_END + continuation)
    if full[: len(head)] != head or len(full) == len(head):
        raise ValueError(f"cannot split the continuation {continuation!r} off the prompt's tokens")
    return full[len(head) :]


def file_identity(paths: Iterable[Path]) -> str:
    """A cheap content identity for model files: resolved paths, sizes and modification times.

    Hashing many GB of weights on every load would cost more than the judging it saves.
    """
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
