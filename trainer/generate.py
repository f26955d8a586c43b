"""Candidates' responses to the validation set: batched greedy decoding, cached per response.

Responses are appended to a JSONL file, one record per (config id, item id, max new tokens), as
soon as a batch is done; a rerun generates only what the file lacks and loads no model if
nothing is missing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GenerationConfig

from trainer.candidates import CandidateCheckpoint, load_tokenizer
from trainer.data import InputError, ValidationItem

RESPONSE_FIELDS = ("config_id", "item_id", "max_new_tokens", "instruction", "input", "response")
CacheKey = tuple[str, str, int]  # config id, item id, max new tokens


@dataclass(frozen=True)
class GenerationReport:
    """Responses generated now, found in the file, and checkpoints whose weights were deleted."""

    generated: int
    cached: int
    weights_deleted: int


def _key(record: dict[str, Any]) -> CacheKey:
    return record["config_id"], record["item_id"], record["max_new_tokens"]


def read_responses(path: Path) -> list[dict[str, Any]]:
    """The records of a responses file; a last line cut short by a kill is cut off the file."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        with path.open("r+b") as handle:
            handle.truncate(len(text.encode("utf-8")))
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
        missing = [name for name in RESPONSE_FIELDS if name not in record]
        if missing:
            raise InputError(f"{path}:{number}: field '{missing[0]}' is missing")
        records.append(record)
    return records


class _SharedBase:
    """One base model for every LoRA checkpoint of a generation call: each adapter is put on it
    for its responses and taken off again (`unload`), instead of loading the base per config."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.model: Any = None

    def attach(self, checkpoint: CandidateCheckpoint) -> Any:
        if self.path != checkpoint.base_model:
            self.model = AutoModelForCausalLM.from_pretrained(
                checkpoint.base_model, local_files_only=True, dtype=torch.float32
            )
            self.path = checkpoint.base_model
        return PeftModel.from_pretrained(self.model, checkpoint.path).eval()

    def detach(self, model: Any) -> None:
        self.model = model.unload()


def _uses_shared_base(checkpoint: CandidateCheckpoint) -> bool:
    return checkpoint.config.get("finetune") == "lora" and not torch.cuda.is_available()


def load_candidate_model(checkpoint: CandidateCheckpoint) -> Any:
    """A checkpoint's model for inference: its (bf16) weights, or the base with the LoRA adapter
    (merged for speed, except on a 4-bit base); computed in bf16 on a GPU, float32 on a CPU."""
    finetune = checkpoint.config.get("finetune")
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # CPUs: bf16 is slow
    if finetune == "full":
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint.path, local_files_only=True, dtype=dtype
        )
    else:
        quantization = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            if finetune == "qlora"
            else None
        )
        base = AutoModelForCausalLM.from_pretrained(
            checkpoint.base_model,
            local_files_only=True,
            dtype=dtype,
            quantization_config=quantization,
        )
        model = PeftModel.from_pretrained(base, checkpoint.path)
        if finetune == "lora":
            model = model.merge_and_unload()
    if torch.cuda.is_available() and finetune != "qlora":
        model = model.to("cuda")
    return model.eval()


def _batches(items: Sequence[ValidationItem], size: int) -> Iterator[list[ValidationItem]]:
    ordered = sorted(items, key=lambda item: len(item.prompt()))  # less padding per batch
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


@torch.inference_mode()
def _generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    output = model.generate(**encoded, generation_config=settings)
    new_tokens = output[:, encoded["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _delete_weights(checkpoint: CandidateCheckpoint) -> None:
    """Keep the checkpoint's trainer_state.json (it still names the config), drop the model."""
    for path in checkpoint.path.iterdir():
        if path.name != "trainer_state.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _deletable(checkpoint: CandidateCheckpoint) -> bool:
    """Full fine-tuning weights (hundreds of MB each) may go once their responses exist; a
    LoRA or QLoRA adapter (megabytes) is always kept, so any candidate can be exported."""
    return checkpoint.config.get("finetune") == "full" and checkpoint.has_weights


def _append_responses(
    out: Path,
    checkpoint: CandidateCheckpoint,
    items: Sequence[ValidationItem],
    responses: Sequence[str],
    max_new_tokens: int,
) -> None:
    """Append one JSONL record per response (a killed run keeps every finished batch)."""
    with out.open("a", encoding="utf-8") as handle:
        for item, response in zip(items, responses, strict=True):
            record = {
                "config_id": checkpoint.config.id,
                "item_id": item.id,
                "max_new_tokens": max_new_tokens,
                "instruction": item.instruction,
                "input": item.input,
                "response": response,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def generate_responses(
    checkpoints: Sequence[CandidateCheckpoint],
    items: Sequence[ValidationItem],
    out: Path,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    delete_weights: bool = False,
    on_progress: Callable[[int], None] | None = None,
    on_model: Callable[[CandidateCheckpoint, Any, Any], None] | None = None,
) -> GenerationReport:
    """Greedy responses of every checkpoint to every item, appended to `out` (JSONL).

    `delete_weights` removes the full fine-tuning model of a finished run's checkpoint once all
    its responses are stored, as judging needs only the responses (adapters are kept);
    `on_progress(n)` counts responses done, cached ones included; `on_model(checkpoint, model,
    tokenizer)` is called while a checkpoint's model is loaded for generation (the reference
    NLL uses it).
    """
    done = {_key(record) for record in read_responses(out)}
    unique = list({item.id: item for item in items}.values())
    generated = cached = deleted = 0
    shared = _SharedBase()
    out.parent.mkdir(parents=True, exist_ok=True)
    for checkpoint in checkpoints:
        missing = [i for i in unique if (checkpoint.config.id, i.id, max_new_tokens) not in done]
        cached += len(unique) - len(missing)
        if on_progress is not None:
            on_progress(len(unique) - len(missing))
        if missing and not checkpoint.has_weights:
            raise InputError(
                f"{checkpoint.path}: the weights of config {checkpoint.config.id} were deleted "
                "after an earlier generation, and this validation set has new items"
            )
        if missing:
            tokenizer = load_tokenizer(checkpoint.path)
            tokenizer.padding_side = "left"
            lora_on_cpu = _uses_shared_base(checkpoint)
            model = shared.attach(checkpoint) if lora_on_cpu else load_candidate_model(checkpoint)
            for batch in _batches(missing, batch_size):
                responses = _generate(model, tokenizer, [i.prompt() for i in batch], max_new_tokens)
                _append_responses(out, checkpoint, batch, responses, max_new_tokens)
                generated += len(batch)
                if on_progress is not None:
                    on_progress(len(batch))
            if on_model is not None:
                on_model(checkpoint, model, tokenizer)
            if lora_on_cpu:
                shared.detach(model)
            del model
        if delete_weights and checkpoint.run_finished and _deletable(checkpoint):
            _delete_weights(checkpoint)
            deleted += 1
    return GenerationReport(generated, cached, deleted)
