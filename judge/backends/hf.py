"""Transformers backend: full precision (fp32/bf16) or bitsandbytes 8-bit / 4-bit (nf4)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from judge.backends.base import GenerationSettings
from judge.backends.tokens import continuation_ids, file_identity
from judge.verdict import generation_settled

if TYPE_CHECKING:
    from judge.backends import JudgeSpec

QUANTIZATIONS = ("8bit", "4bit")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def quantization_config(quant: str | None, dtype: str) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for `quant=8bit|4bit` (4-bit is nf4, computing in `dtype`)."""
    if quant is None:
        return None
    if quant not in QUANTIZATIONS:
        raise ValueError(f"quant must be one of {QUANTIZATIONS}, got {quant!r}")
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[dtype]
    )


def load_pretrained(
    auto_class: type, path: Path, dtype: str, quant: str | None, padding: str
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """A local model directory's tokenizer (padded on the `padding` side, its EOS token as the
    pad token where it has none) and its model in eval mode, through `auto_class`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = padding
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = auto_class.from_pretrained(
        path,
        local_files_only=True,
        dtype=DTYPES[dtype],
        quantization_config=quantization_config(quant, dtype),
    )
    return tokenizer, model.eval()


class _SettledOutputs(StoppingCriteria):
    """Per-row stop once the generated text's parse can no longer change."""

    def __init__(self, tokenizer, prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_length :], skip_special_tokens=True
        )
        return torch.tensor([generation_settled(t) for t in texts], dtype=torch.bool)


class TransformersBackend:
    """A local transformers causal LM; batches prompts with left padding."""

    def __init__(
        self,
        path: Path,
        quant: str | None = None,
        dtype: str = "fp32",
        batch_size: int = 8,
    ) -> None:
        self.batch_size = batch_size
        self.tokenizer, self.model = load_pretrained(
            AutoModelForCausalLM, path, dtype, quant, padding="left"
        )
        weights = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
        self.identity = f"hf:{file_identity(weights)}:quant={quant}:dtype={dtype}"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True)
        mask = encoded["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return encoded["input_ids"], mask, positions

    @torch.inference_mode()
    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        texts: list[str] = []
        for batch in _chunks(prompts, self.batch_size):
            input_ids, mask, _ = self._encode(batch)
            stopping = StoppingCriteriaList()
            if settings.stop_early:
                stopping.append(_SettledOutputs(self.tokenizer, input_ids.shape[1]))
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=settings.max_new_tokens,
                num_beams=settings.num_beams,
                repetition_penalty=settings.repetition_penalty,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=stopping,
            )
            new_tokens = output[:, input_ids.shape[1] :]
            texts.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return texts

    @torch.inference_mode()
    def score(self, prompts: list[str], continuations: list[str]) -> list[list[float]]:
        """One forward pass per prompt; multi-token continuations extend the shared KV cache."""
        token_lists = [continuation_ids(self._tokenize_plain, text) for text in continuations]
        scores: list[list[float]] = []
        for batch in _chunks(prompts, self.batch_size):
            input_ids, mask, positions = self._encode(batch)
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            cache = out.cache
            batch_scores = torch.zeros(len(batch), len(token_lists))
            for column, tokens in enumerate(token_lists):
                total = first[:, tokens[0]].clone()
                if len(tokens) > 1:
                    extra = len(tokens) - 1
                    step_ids = torch.tensor([tokens[:-1]]).expand(len(batch), -1)
                    step_mask = torch.cat(
                        [mask, torch.ones(len(batch), extra, dtype=mask.dtype)], 1
                    )
                    step_positions = positions[:, -1:] + torch.arange(1, extra + 1)
                    step = self.model(
                        input_ids=step_ids,
                        attention_mask=step_mask,
                        position_ids=step_positions,
                        cache=cache,
                        use_cache=True,
                    )
                    logprobs = torch.log_softmax(step.logits.float(), dim=-1)
                    for offset, token in enumerate(tokens[1:]):
                        total += logprobs[:, offset, token]
                    cache.crop(-extra)
                batch_scores[:, column] = total
            scores.extend(batch_scores.tolist())
        return scores

    def _tokenize_plain(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def from_spec(spec: JudgeSpec) -> TransformersBackend:
    """`hf:PATH[?quant=8bit|4bit&dtype=bf16&batch=N]` (judge.backends' registry loads it
    through this)."""
    quant = spec.options.get("quant")
    return TransformersBackend(
        Path(spec.path),
        quant=str(quant) if quant else None,
        dtype=str(spec.options.get("dtype", "fp32")),
        batch_size=int(spec.options.get("batch", 8)),
    )
