"""Training a PandaLM-format judge with the transformers Trainer (full or LoRA, DeepSpeed ZeRO-2).

Defaults are the PandaLM paper's: AdamW, learning rate 2e-5, cosine schedule, 2 epochs, warmup
ratio 0.03, micro batch 2 per device, gradient accumulation 8, bf16 (where the GPU has it),
max length 1024 and DeepSpeed ZeRO stage 2 (`trainer/deepspeed/zero2.json`; the Trainer builds
the optimizer and schedule, DeepSpeed partitions their state). Launch under `deepspeed`,
`torchrun` or plainly; on CPU the Trainer runs with `use_cpu=True` (without it DeepSpeed does
not split the data between processes).

Output directory:

    model.safetensors, config.json, tokenizer*   the trained judge (`hf:DIR`; LoRA: merged)
    adapter/                                     LoRA only: the adapter alone
    examples/rank-<r>.txt                        the example indices each process trained on
    judge_training.json                          settings, filter report, train and eval metrics
    checkpoint-<step>/                           the latest checkpoint while training (resume)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from trainer.arguments import JudgeTrainingArguments, SettingsError
from trainer.candidates import add_lora, load_tokenizer, resolve_base_model
from trainer.judges.data import FilterReport, JudgeRecord, load_judge_records, prepare_judge_data

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

__all__ = [
    "JudgeTrainingArguments",
    "JudgeTrainingReport",
    "build_judge_trainer",
    "evaluate_judge",
    "train_judge",
]

EXAMPLE_INDEX = "example_index"
REPORT_FILE = "judge_training.json"


@dataclass
class JudgeTrainingReport:
    """What a training run read, kept, trained and (optionally) measured."""

    filter_report: FilterReport
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any] | None
    output_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "filter": asdict(self.filter_report),
            "train": self.train_metrics,
            "eval": self.eval_metrics,
            "output_dir": str(self.output_dir),
        }


class ExampleLogCollator:
    """Pads like `DataCollatorForSeq2Seq` and appends each batch's example indices to
    `examples/rank-<r>.txt`, a record of which shard every process trained on."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, log_path: Path) -> None:
        self.pad = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        indices = [feature[EXAMPLE_INDEX] for feature in features]
        with self.log_path.open("a") as log:
            log.write(" ".join(map(str, indices)) + "\n")
        return self.pad([{k: v for k, v in f.items() if k != EXAMPLE_INDEX} for f in features])


def load_judge_model(args: JudgeTrainingArguments) -> PreTrainedModel:
    """The base model, with a LoRA adapter when `args.lora`."""
    set_seed(args.seed)  # LoRA's initial weights
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if cuda_bf16 and args.lora else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        args.base_model, local_files_only=True, dtype=dtype
    )
    if args.lora:
        model = add_lora(
            model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_target_modules
        )
    return model


def verdict_weighted_loss(weight: float):
    """Causal-LM cross-entropy in which the first target token of each example, the verdict,
    counts `weight` times. In PandaLM's target the verdict is one token before a long reason
    and reference; with a plain loss a 135M judge learns to copy the reference long before it
    learns to judge (measured: its verdicts stayed at 50/50 on its own training pairs)."""

    def loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, 1:].to(logits.device)
        token_loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        scored = targets != -100
        verdict = scored & (scored.cumsum(dim=1) == 1)
        weights = scored.float() + (weight - 1.0) * verdict.float()
        count = num_items_in_batch if num_items_in_batch is not None else scored.sum()
        return (token_loss * weights).sum() / count

    return loss


def build_judge_trainer(
    args: JudgeTrainingArguments,
    training_args: TrainingArguments,
    examples: Sequence[dict[str, list[int]]],
    tokenizer: PreTrainedTokenizerBase,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """A transformers Trainer over the tokenized judge data."""
    tokenizer.padding_side = "right"
    indexed = [{**example, EXAMPLE_INDEX: index} for index, example in enumerate(examples)]
    log_path = args.output_dir / "examples" / f"rank-{training_args.process_index}.txt"
    return Trainer(
        model=load_judge_model(args),
        args=training_args,
        train_dataset=indexed,
        data_collator=ExampleLogCollator(tokenizer, log_path),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        compute_loss_func=(
            verdict_weighted_loss(args.verdict_loss_weight)
            if args.verdict_loss_weight != 1.0
            else None
        ),
    )


def evaluate_judge(
    model_dir: Path, testset: Path, mode: str = "score", limit: int | None = None
) -> dict[str, Any]:
    """Judge a labelled test set in both orders (conflict -> Tie) and compute the metrics."""
    from judge.backends import load_backend
    from judge.engine import PairJudge, RunStats
    from judge.io import read_testset
    from judge.metrics import judge_metrics

    items = read_testset(testset).items[:limit]
    pair_judge = PairJudge(load_backend(f"hf:{model_dir}"), mode)  # type: ignore[arg-type]
    stats = RunStats()
    predicted = []
    for judgment in pair_judge.judge_iter(item.pair for item in items):
        stats.add(judgment)
        predicted.append(judgment.verdict)
    return judge_metrics([item.gold for item in items], predicted, stats.consistency)


def _save_judge(trainer: Trainer, args: JudgeTrainingArguments, tokenizer) -> None:
    """The judge as a plain transformers directory; LoRA also keeps its adapter alone."""
    if not args.lora:
        trainer.save_model(str(args.output_dir))
        return
    trainer.save_model(str(args.output_dir / "adapter"))
    if trainer.args.process_index == 0:
        merged = trainer.model.merge_and_unload()  # type: ignore[union-attr,operator]
        merged.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)


def train_judge(
    args: JudgeTrainingArguments,
    records: Sequence[JudgeRecord] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> JudgeTrainingReport:
    """Filter and tokenize the data, train, save the judge and optionally evaluate it.

    `records` replaces reading `args.data` (the builtin-judge recipe builds them in memory).
    A run killed mid-way resumes from the checkpoint in the output directory.
    """
    training_args = args.training_arguments()  # sets up the process group first
    main_process = training_args.process_index == 0
    args.base_model = resolve_base_model(args.base_model)
    tokenizer = load_tokenizer(args.base_model)
    records = load_judge_records(args.data) if records is None else records
    data, filter_report = prepare_judge_data(
        records, tokenizer, args.max_length, args.over_length, args.swap_augmentation
    )
    if main_process:
        print("judge training data:\n  " + "\n  ".join(filter_report.lines()), flush=True)
    if not data.examples:
        raise SettingsError("no training record is left after filtering")
    last_checkpoint = (
        get_last_checkpoint(str(args.output_dir)) if args.output_dir.is_dir() else None
    )
    if last_checkpoint is None:  # each process starts its own example log afresh
        (args.output_dir / "examples" / f"rank-{training_args.process_index}.txt").unlink(
            missing_ok=True
        )
    trainer = build_judge_trainer(args, training_args, data.examples, tokenizer, callbacks)
    result = trainer.train(resume_from_checkpoint=last_checkpoint)
    _save_judge(trainer, args, tokenizer)
    eval_metrics = None
    if main_process:
        for checkpoint in args.output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        if args.eval_testset is not None:
            eval_metrics = evaluate_judge(
                args.output_dir, args.eval_testset, args.eval_mode, args.eval_limit
            )
    plugin = trainer.accelerator.state.deepspeed_plugin
    train_metrics = {
        **result.metrics,
        "world_size": training_args.world_size,
        "deepspeed_zero_stage": plugin.zero_stage if plugin is not None else None,
        "examples": len(data.examples),
    }
    report = JudgeTrainingReport(filter_report, train_metrics, eval_metrics, args.output_dir)
    if main_process:
        payload = {"settings": args.to_json(), **report.to_json()}
        tmp = args.output_dir / f".{REPORT_FILE}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, args.output_dir / REPORT_FILE)
    trainer.accelerator.wait_for_everyone()
    return report


def package_adapter(adapter_dir: Path, out_dir: Path, rank: int | None = None) -> Path:
    """A trained LoRA adapter as the package ships it: fp16 weights, and with `rank` each
    update B·A cut to its best rank-`rank` approximation (truncated SVD, alpha scaled so the
    update's scale is unchanged) to keep the adapter small."""
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    if rank is not None and rank < config["r"]:
        for name_a in [n for n in weights if ".lora_A." in n]:
            name_b = name_a.replace(".lora_A.", ".lora_B.")
            a, b = weights[name_a].double(), weights[name_b].double()
            q_b, r_b = torch.linalg.qr(b)
            q_a, r_a = torch.linalg.qr(a.T)
            u, s, vh = torch.linalg.svd(r_b @ r_a.T)
            root = s[:rank].sqrt()
            weights[name_b] = (q_b @ u[:, :rank]) * root
            weights[name_a] = (root[:, None] * vh[:rank]) @ q_a.T
        config["lora_alpha"] = config["lora_alpha"] * rank / config["r"]
        config["r"] = rank
    config["base_model_name_or_path"] = "builtin"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.to(torch.float16).contiguous() for name, tensor in weights.items()},
        str(out_dir / "adapter_model.safetensors"),
    )
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir / "adapter_model.safetensors"
