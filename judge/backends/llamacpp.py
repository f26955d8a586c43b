"""llama.cpp backend (GGUF on CPU) that keeps the KV cache of the shared prompt prefix.

The two orders of a pair, and consecutive pairs on the same task, share the prompt up to the
responses: only the differing suffix is evaluated again.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from judge.backends.base import GenerationSettings
from judge.backends.tokens import continuation_ids, file_identity
from judge.verdict import generation_settled

if TYPE_CHECKING:
    from judge.backends import JudgeSpec


class LlamaCppBackend:
    """A GGUF model through llama-cpp-python, one sequence at a time."""

    def __init__(
        self, path: Path, n_threads: int | None = None, n_ctx: int = 4096, n_batch: int = 512
    ) -> None:
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,
            verbose=False,
        )
        self.identity = f"gguf:{file_identity([Path(path)])}"

    def count_tokens(self, text: str) -> int:
        return len(self._tokens(text))

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def _tokens_plain(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _check_room(self, tokens: list[int], extra: int) -> None:
        if len(tokens) + extra > self.llm.n_ctx():
            raise ValueError(
                f"prompt of {len(tokens)} tokens plus {extra} more does not fit the judge's "
                f"context of {self.llm.n_ctx()} tokens (raise it with gguf:PATH?ctx=N)"
            )

    def _prefill(self, tokens: list[int]) -> None:
        """Evaluate `tokens` through llama-cpp-python's own prefix matching: `Llama.generate`
        keeps the longest prefix already in the KV cache and decodes the rest; its first
        sampled token is drawn from, and leaves in place, the logits of the prompt's last
        token, and is never decoded."""
        stream = self.llm.generate(tokens, top_k=1, temp=0.0, reset=True)
        next(stream)
        stream.close()

    def _last_logprobs(self) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).astype(np.float64)
        top = logits.max()
        return logits - (top + np.log(np.exp(logits - top).sum()))

    def score(self, prompts: list[str], continuations: list[str]) -> list[list[float]]:
        token_lists = [continuation_ids(self._tokens_plain, text) for text in continuations]
        longest = max(len(tokens) for tokens in token_lists)
        scores = []
        for prompt in prompts:
            tokens = self._tokens(prompt)
            self._check_room(tokens, longest)
            self._prefill(tokens)
            first = self._last_logprobs()
            row = []
            for continuation in token_lists:
                total = float(first[continuation[0]])
                for previous, token in pairwise(continuation):
                    self.llm.eval([previous])
                    total += float(self._last_logprobs()[token])
                self.llm.n_tokens = len(tokens)  # the next continuation starts at the prompt
                row.append(total)
            if longest > 1:  # the logits are a continuation's: keep a prefix whose end is
                self.llm.n_tokens = len(tokens) - 1  # decoded again by the next prefill
            scores.append(row)
        return scores

    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        if settings.num_beams != 1:
            raise ValueError("beam search is not available on llama.cpp: use an hf: judge")
        texts = []
        for prompt in prompts:
            tokens = self._tokens(prompt)
            self._check_room(tokens, settings.max_new_tokens)
            stream = self.llm.create_completion(
                tokens,
                max_tokens=settings.max_new_tokens,
                temperature=0.0,
                top_k=1,
                repeat_penalty=settings.repetition_penalty,
                stream=True,
            )
            text = ""
            for chunk in stream:
                text += chunk["choices"][0]["text"]
                if settings.stop_early and generation_settled(text):
                    break
            texts.append(text)
        return texts


def from_spec(spec: JudgeSpec) -> LlamaCppBackend:
    """`gguf:PATH[?threads=N&ctx=N]` (judge.backends' registry loads it through this)."""
    return LlamaCppBackend(
        Path(spec.path),
        n_threads=int(spec.options.get("threads", 0)) or None,
        n_ctx=int(spec.options.get("ctx", 4096)),
    )
