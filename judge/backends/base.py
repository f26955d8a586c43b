"""The small interface every judge backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from judge.cache import JudgmentCache
    from judge.prompt import Pair


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings for `generate` mode.

    The default is greedy decoding that stops as soon as more tokens cannot change the parsed
    result (an invalid verdict line, or a runaway new prompt section); `reference()` gives the
    settings of PandaLM's released inference code (beam 4, repetition penalty 1.2, up to 512
    new tokens, no early stop).
    """

    max_new_tokens: int = 512
    num_beams: int = 1
    repetition_penalty: float = 1.0
    stop_early: bool = True
    """Stop once the output's parse is settled (judge.verdict.generation_settled)."""

    @classmethod
    def reference(cls) -> GenerationSettings:
        return cls(max_new_tokens=512, num_beams=4, repetition_penalty=1.2, stop_early=False)


class JudgeBackend(Protocol):
    """A loaded judge model that can continue prompts and score continuations."""

    identity: str
    """Names the model file and loading options; keys the judgment cache."""

    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        """The text generated after each prompt (the prompt itself excluded)."""
        ...

    def score(self, prompts: list[str], continuations: list[str]) -> list[list[float]]:
        """For each prompt, the total log-probability of every continuation, all its tokens."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens the backend's tokenizer gives `text` (prefill accounting)."""
        ...


class PointwiseBackend(Protocol):
    """A judge that scores each response on its own (judge/pointwise.py): pair probabilities
    come from per-response encodings, each computed once and kept in the judgment cache."""

    identity: str
    pointwise: bool

    def attach_cache(self, cache: JudgmentCache | None) -> None: ...

    def probabilities(self, pairs: list[Pair]) -> list[dict[str, float]]:
        """p(`1`), p(`2`), p(`Tie`) for each pair as presented."""
        ...
