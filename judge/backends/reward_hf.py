"""A transformers reward model in this process (`reward:PATH`): any sequence-classification
model directory with one output.

The text a response is scored in: with a chat template on the tokenizer, the template applied to
a user turn (the instruction, then a blank line and the input if any) and an assistant turn (the
response), as the model was trained; without one, the tokenizer's pair encoding of (that user
text, the response), which is how encoder reward models such as OpenAssistant's DeBERTa ones
are fed a question and an answer. Batches are padded on the right, so every real token keeps
the position it has alone and the model reads the last real token (decoders) or the first
(encoders); inputs are sorted by length first, so little padding is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from judge.backends.hf import load_pretrained
from judge.backends.tokens import file_identity
from judge.pointwise import Task, user_text

LONGEST_INPUT = 1 << 20
"""Tokenizers without a known limit report a huge model_max_length: no truncation then."""


class TransformersRewardModel:
    """Scores responses with a local reward model, `batch_size` at a time."""

    def __init__(
        self, path: Path, dtype: str = "fp32", batch_size: int = 8, quant: str | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.tokenizer, self.model = load_pretrained(
            AutoModelForSequenceClassification, path, dtype, quant, padding="right"
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{path / 'config.json'}: num_labels is {self.model.config.num_labels}; a reward "
                "model has one output"
            )
        if self.model.config.pad_token_id is None:  # decoders find the last real token by it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        limit = self.tokenizer.model_max_length
        self.max_length = limit if limit < LONGEST_INPUT else None
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        self.identity = f"{file_identity(weights)}:quant={quant}:dtype={dtype}"

    def _encode(self, tasks: Sequence[Task], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        truncate = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        users = [user_text(task) for task in tasks]
        if not self.chat:
            return self.tokenizer(
                users, list(responses), padding=True, return_tensors="pt", **truncate
            )
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": u}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for u, r in zip(users, responses, strict=True)
        ]  # the template writes the special tokens itself
        return self.tokenizer(
            texts, padding=True, add_special_tokens=False, return_tensors="pt", **truncate
        )

    @torch.inference_mode()
    def rewards(self, tasks: Sequence[Task], responses: Sequence[str]) -> list[float]:
        """One score per response, computed in length-sorted batches."""
        order = sorted(range(len(responses)), key=lambda i: len(responses[i]) + len(tasks[i][0]))
        scores = [0.0] * len(responses)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            encoded = self._encode([tasks[i] for i in chunk], [responses[i] for i in chunk])
            encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
            logits = self.model(**encoded).logits[:, 0].float().tolist()
            for index, value in zip(chunk, logits, strict=True):
                scores[index] = value
        return scores
