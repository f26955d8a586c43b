"""The settings dataclasses of `pandalm-train`'s training commands, light to import (no torch):
each field a command line offers carries its option here (`trainer/options.py`), so the CLI and
the library declare it once."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from common.protocol import JUDGE_MODES
from common.records import InputError
from common.space import SCHEDULE_HORIZONS, ScheduleHorizon
from trainer.judges.data import OVER_LENGTH_RULES, OverLength
from trainer.options import cli

if TYPE_CHECKING:
    from transformers import TrainingArguments

Retention = Literal["weights", "resumable"]
RETENTIONS: tuple[str, ...] = ("weights", "resumable")
BASE_HELP = "builtin, or a local HF causal-LM dir"


class SettingsError(InputError):
    """Settings that cannot be used, or that differ from those an output directory was
    trained with."""


def _check_training(warmup_ratio: float, deepspeed_option: str | None) -> None:
    """What every training command checks: the warmup share, and DeepSpeed where one is asked
    for (by the option named `deepspeed_option`)."""
    if not 0 <= warmup_ratio < 1:
        raise SettingsError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if deepspeed_option and importlib.util.find_spec("deepspeed") is None:
        raise SettingsError(f"{deepspeed_option} needs DeepSpeed: pip install deepspeed")


@dataclass
class CandidateTrainingArguments:
    """A site's settings for training candidates; the config ids name what varies between them.

    `schedule_horizon`: `run` trains one run per (optimizer, lr, scheduler, ...) for the largest
    epoch count and takes epoch k's checkpoint as config `epochs = k`, so its learning-rate
    schedule spans the whole run (the paper's practice); `config` gives each config its own run
    whose schedule ends at its epoch count (costs more). `retention`: `weights` keeps per config
    only its model weights (or LoRA adapter) once a run finishes; `resumable` also keeps the
    optimizer, scheduler and RNG state of the run's last checkpoint. Older epochs' trainer state
    is dropped as soon as the next epoch is saved. `max_steps_per_epoch` caps an epoch by
    training on fewer examples (quick runs).
    """

    output_dir: Path = field(metadata=cli("--out", help="output directory (resumable)"))
    base_model: Path
    max_length: int = field(default=1024, metadata=cli(min=2, help="tokens per example"))
    per_device_train_batch_size: int = field(
        default=8, metadata=cli("--batch-size", min=1, help="per device")
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata=cli("--gradient-accumulation", min=1, help="micro batches per step")
    )
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    seed: int = field(default=42, metadata=cli(help="training seed"))
    schedule_horizon: ScheduleHorizon = field(
        default="run", metadata=cli("--horizon", help="schedule spans the run or each config")
    )
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    lora_top_layers: int | None = None
    """LoRA on the last N transformer layers only: backpropagation stops below them, which
    roughly halves a step's cost for N of 30 small (quick CPU runs); None: every layer."""
    max_steps_per_epoch: int | None = field(
        default=None,
        metadata=cli("--max-steps", min=1, help="at most N optimizer steps per epoch (quick runs)"),
    )
    activation_checkpointing: bool = False
    deepspeed_zero2: bool = field(
        default=False,
        metadata=cli("--deepspeed/--no-deepspeed", help="DeepSpeed ZeRO-2 (multi-GPU sites)"),
    )
    retention: Retention = field(
        default="weights", metadata=cli(help="keep optimizer state after a run (resumable) or not")
    )

    def __post_init__(self) -> None:
        self.output_dir, self.base_model = Path(self.output_dir), Path(self.base_model)
        _check_training(self.warmup_ratio, "deepspeed_zero2" if self.deepspeed_zero2 else None)
        if self.schedule_horizon not in SCHEDULE_HORIZONS:
            raise SettingsError(f"schedule_horizon must be one of {SCHEDULE_HORIZONS}")
        if self.retention not in RETENTIONS:
            raise SettingsError(f"retention must be one of {RETENTIONS}, got {self.retention!r}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings a finished run depends on (not where it is written or how it is kept)."""
        settings = asdict(self)
        for name in ("output_dir", "retention"):
            settings.pop(name)
        settings["base_model"] = str(self.base_model.resolve())
        return settings


@dataclass
class JudgeTrainingArguments:
    """What `pandalm-train judge` trains with; the defaults are the PandaLM paper's recipe.

    `lora` trains a LoRA adapter (the paper's 70B row) and saves the merged model too, so the
    output directory is a judge either way. `eval_testset` (PandaLM's labelled test-set format)
    is judged after training, both orders, and its metrics go into the report. `max_steps`
    stops early (quick runs); `save_steps` keeps one checkpoint to resume a killed run from.
    """

    base_model: Path = field(metadata=cli("--base", help=BASE_HELP))
    data: Path
    output_dir: Path = field(metadata=cli("--out", help="output directory: the trained judge"))
    deepspeed: Path | None = field(
        default=None,
        metadata=cli(help="DeepSpeed config JSON, e.g. trainer/deepspeed/zero2.json", exists=True),
    )
    lora: bool = field(
        default=False, metadata=cli("--lora", help="train a LoRA adapter (large bases)")
    )
    lora_rank: int = field(default=16, metadata=cli(min=1, help="LoRA rank"))
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    learning_rate: float = field(default=2e-5, metadata=cli(min=0.0, help="peak learning rate"))
    lr_scheduler_type: str = "cosine"
    optim: str = "adamw_torch"
    weight_decay: float = 0.0
    num_train_epochs: float = field(default=2.0, metadata=cli("--epochs", min=0.0, help="epochs"))
    warmup_ratio: float = field(
        default=0.03, metadata=cli(min=0.0, max=0.99, help="share of the steps warming up")
    )
    per_device_train_batch_size: int = field(
        default=2, metadata=cli("--batch-size", min=1, help="micro batch per device")
    )
    gradient_accumulation_steps: int = field(
        default=8, metadata=cli("--gradient-accumulation", min=1, help="micro batches per step")
    )
    max_length: int = field(default=1024, metadata=cli(min=8, help="tokens per record"))
    verdict_loss_weight: float = field(
        default=1.0,
        metadata=cli(min=1.0, help="weight of the verdict token in the loss (1: paper)"),
    )
    """How many times the verdict (the target's first token) counts in the loss; 1 is the
    paper's plain loss. A small judge needs more (a 135M judge: 30-50), see
    verdict_weighted_loss."""
    over_length: OverLength = field(default="drop", metadata=cli(help="records over max length"))
    swap_augmentation: bool = field(
        default=False, metadata=cli("--swap", help="add every record's mirror")
    )
    activation_checkpointing: bool = False
    max_steps: int | None = field(default=None, metadata=cli(min=1, help="stop early (quick runs)"))
    save_steps: int = field(default=200, metadata=cli(min=1, help="checkpoint interval (resume)"))
    logging_steps: int = 10
    seed: int = field(default=42, metadata=cli(help="training and data seed"))
    eval_testset: Path | None = field(
        default=None,
        metadata=cli(help="labelled test set judged after training (both orders)", exists=True),
    )
    eval_mode: Literal[JUDGE_MODES] = field(
        default="score", metadata=cli(help="how the test set is judged")
    )
    eval_limit: int | None = field(
        default=None, metadata=cli(min=1, help="judge only the first N test items")
    )
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainingArguments, verbatim

    def __post_init__(self) -> None:
        self.base_model, self.data = Path(self.base_model), Path(self.data)
        self.output_dir = Path(self.output_dir)
        if self.deepspeed is not None:
            self.deepspeed = Path(self.deepspeed)
            if not self.deepspeed.is_file():
                raise SettingsError(f"{self.deepspeed}: no DeepSpeed config file there")
        _check_training(self.warmup_ratio, "--deepspeed" if self.deepspeed is not None else None)
        if self.eval_testset is not None:
            self.eval_testset = Path(self.eval_testset)
        if self.over_length not in OVER_LENGTH_RULES:
            raise SettingsError(f"over_length must be one of {OVER_LENGTH_RULES}")
        if self.eval_mode not in JUDGE_MODES:
            raise SettingsError(f"eval_mode must be one of {', '.join(JUDGE_MODES)}")

    def training_arguments(self) -> TrainingArguments:
        """The transformers TrainingArguments these settings stand for."""
        import torch
        from transformers import TrainingArguments

        cuda = torch.cuda.is_available()
        return TrainingArguments(
            output_dir=str(self.output_dir),
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps if self.max_steps is not None else -1,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            optim=self.optim,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_ratio,  # transformers 5: a float below 1 is a ratio
            logging_steps=self.logging_steps,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=1,
            seed=self.seed,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            use_cpu=not cuda,
            activation_checkpointing=self.activation_checkpointing,
            deepspeed=str(self.deepspeed) if self.deepspeed is not None else None,
            remove_unused_columns=False,  # the collator needs the example index
            report_to="none",
            **self.extra,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class BuiltinJudgeArguments:
    """Settings of `pandalm-train builtin-judge`."""

    testset: Path = field(
        metadata=cli(help="PandaLM's dev split (human labels; trained on)", exists=True)
    )
    """PandaLM's dev split (human labels); trained on, reported out-of-fold."""
    out: Path = field(
        default=Path("judge/builtin_judge"),
        metadata=cli("--out", help="where head.json and README.md go"),
    )
    preferences: list[Path] = field(
        default_factory=list,
        metadata=cli("--preferences", help="preference JSONL (use=train, use=eval)", exists=True),
    )
    """Preference JSONL files: `use = "train"` rows train and are left out in turn, `use =
    "eval"` rows are only judged."""
    folds: int = field(default=5, metadata=cli(min=2, help="dev split out-of-fold folds"))
    features: tuple[str, ...] = ("log_effective_tokens", "copies_task", "script_mismatch")
    """judge.features measures the score reads, chosen by forward selection on the mean
    held-out gain over the best rule (dev out-of-fold and leave-one-source-out; never the
    eval rows), which picked log_tokens, copies_task, script_mismatch (+0.020); the length is
    then taken repetition-discounted (+0.018), so a looping or punctuation-only candidate,
    which no human-labelled source here contains, scores as short, not long."""
    length_nuisance: tuple[str, ...] = ("llmbar", "hh-rlhf-harmless", "llmeval2")
    """Sources whose length preference is their own: LLMBar's adversarial sets punish length by
    design, hh-rlhf's harmless set prefers refusals, LLMEval²'s train subsets (hh-rlhf,
    summaries) prefer the shorter; they inform every weight but the length ones."""
    tie_reference: str = "pandalm-dev"
    """The source whose tie convention the shipped judge keeps (the product's task)."""
    l2: float = 10.0
    """Ridge strength on the score's weights (per pair)."""
    bootstrap_rounds: int = field(default=1000, metadata=cli(min=100, help="bootstrap resamples"))
