"""Candidate instruction tuning: one transformers Trainer run per training run of the space.

Layout of the output directory:

    settings.json              the settings and data fingerprint every run here was trained with
    runs/<run id>/run.json     the run's parameters, the config each epoch stands for, finished
    runs/<run id>/checkpoint-<step>/   one Trainer checkpoint per epoch (weights or adapter)

With `retention = "weights"` (the default) a kept checkpoint holds bf16 weights (or the LoRA
adapter as trained): only the newest checkpoint of an unfinished run keeps full-precision weights
and the optimizer, scheduler and RNG state that resume it exactly, and the last epoch of a run is
saved as the model only (`save_only_model`), since nothing resumes from it. With `resumable` the
newest checkpoint keeps that state even when the run is finished.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback

from common.space import (
    CandidateConfig,
    TrainingRun,
    plan_training_runs,
)
from judge.models import ModelNotFoundError, builtin_base_hf_dir
from trainer.arguments import CandidateTrainingArguments, Retention, SettingsError
from trainer.data import (
    InputError,
    InstructionRecord,
    TokenizedData,
    data_fingerprint,
    tokenize_for_training,
)

OPTIM_NAMES = {"sgd": "sgd", "adamw": "adamw_torch"}  # space name -> TrainingArguments.optim
TRAINER_STATE_FILES = (  # the Trainer's, and DeepSpeed's (global_step*/, latest, zero_to_*.py)
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "global_step*",
    "latest",
    "zero_to_*.py",
)
WEIGHT_FILES = ("model*.safetensors", "pytorch_model*.bin", "adapter_model.*")
_CHECKPOINT_PREFIX = "checkpoint-"


@dataclass(frozen=True)
class CandidateCheckpoint:
    """The model of one config: a Trainer checkpoint at the end of one epoch of a run."""

    config: CandidateConfig
    path: Path
    base_model: Path
    training_run_id: str
    epoch: int
    global_step: int
    run_finished: bool

    @property
    def has_weights(self) -> bool:
        return any(any(self.path.glob(pattern)) for pattern in WEIGHT_FILES)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.config.to_json(),
            "path": str(self.path),
            "training_run_id": self.training_run_id,
            "epoch": self.epoch,
            "global_step": self.global_step,
        }


@dataclass
class CandidatesReport:
    """What a `train_candidates` call produced and skipped, and how the data fit."""

    checkpoints: list[CandidateCheckpoint]
    runs_trained: list[str] = field(default_factory=list)
    runs_skipped: list[str] = field(default_factory=list)
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    epochs_trained: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoints": [checkpoint.to_json() for checkpoint in self.checkpoints],
            "runs_trained": self.runs_trained,
            "runs_skipped": self.runs_skipped,
            "examples": self.examples,
            "truncated": self.truncated,
            "dropped": self.dropped,
        }


def resolve_base_model(spec: str | Path) -> Path:
    """`builtin` (the embedded SmolLM2-135M) or a local transformers causal-LM directory."""
    if str(spec) == "builtin":
        return builtin_base_hf_dir()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path}: not a local transformers model directory (no config.json)"
        )
    return path


def deepspeed_zero2_config() -> dict[str, Any]:
    """DeepSpeed ZeRO stage 2; "auto" values are filled in from the TrainingArguments."""
    return {
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "allgather_bucket_size": 2e8,
        },
        "bf16": {"enabled": "auto"},
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
    }


def _use_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_for_training(run: TrainingRun, args: CandidateTrainingArguments) -> PreTrainedModel:
    """The base model, ready for the run's fine-tuning method (full, LoRA or QLoRA)."""
    finetune = run.get("finetune")
    set_seed(args.seed)  # LoRA's initial weights
    dtype = torch.bfloat16 if _use_bf16() and finetune != "full" else torch.float32
    quantization, device_map = None, None
    if finetune == "qlora":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if torch.cuda.is_available():  # 4-bit weights are placed at load time
            device_map = {"": PartialState().local_process_index}
    model = AutoModelForCausalLM.from_pretrained(
        args.base_model,
        local_files_only=True,
        dtype=dtype,
        quantization_config=quantization,
        device_map=device_map,
    )
    if finetune == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.activation_checkpointing
        )
    if finetune != "full":
        model = add_lora(
            model,
            run.params["lora_rank"],
            args.lora_alpha,
            args.lora_dropout,
            args.lora_target_modules,
            args.lora_top_layers,
        )
    return model


def add_lora(
    model: PreTrainedModel,
    rank: int,
    alpha: int,
    dropout: float,
    target_modules: str,
    top_layers: int | None = None,
) -> PreTrainedModel:
    """Wrap a causal LM with a trainable LoRA adapter (peft); the base stays frozen."""
    layers, targets = None, target_modules
    if top_layers is not None:
        total = model.config.num_hidden_layers
        layers = list(range(max(total - top_layers, 0), total))
        if target_modules == "all-linear":  # peft wants module names with layers_to_transform
            block = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))[0]
            targets = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in block.named_modules()
                    if isinstance(m, torch.nn.Linear)
                }
            )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def training_examples(
    data: TokenizedData, run: TrainingRun, args: CandidateTrainingArguments
) -> list[dict[str, list[int]]]:
    """The run's share of the data: a seeded subset for `data_fraction` (smaller fractions are
    subsets of larger ones), cut to `max_steps_per_epoch` batches."""
    order = random.Random(args.seed).sample(range(len(data.examples)), len(data.examples))
    count = math.ceil(run.get("data_fraction") * len(order))
    if args.max_steps_per_epoch is not None:
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        count = min(count, args.max_steps_per_epoch * batch)
    return [data.examples[index] for index in order[:count]]


def build_trainer(
    run: TrainingRun,
    data: TokenizedData,
    tokenizer: PreTrainedTokenizerBase,
    args: CandidateTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """A transformers Trainer for one run: the run's optimizer, learning rate and schedule, and
    a checkpoint at the end of every epoch."""
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "runs" / run.id),
        num_train_epochs=run.epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=run.params["learning_rate"],
        optim=OPTIM_NAMES[run.params["optimizer"]],
        lr_scheduler_type=run.params["scheduler"],
        warmup_steps=args.warmup_ratio,  # a float below 1 is a ratio of the run's steps
        weight_decay=args.weight_decay,
        save_strategy="epoch",
        logging_steps=1,  # every step's loss reaches the callbacks (progress display)
        seed=args.seed,
        bf16=_use_bf16(),
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=args.activation_checkpointing,
        deepspeed=deepspeed_zero2_config() if args.deepspeed_zero2 else None,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
    )
    tokenizer.padding_side = "right"
    trainer = Trainer(
        model=load_model_for_training(run, args),
        args=training_args,
        train_dataset=training_examples(data, run, args),
        data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8),
        processing_class=tokenizer,
        callbacks=[_Retention(run, args.retention), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # logs reach the caller's callbacks instead
    return trainer


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix(_CHECKPOINT_PREFIX))


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints by step; the Trainer writes trainer_state.json last, so a checkpoint without
    one was cut short by a kill."""
    found = [
        path
        for path in run_dir.glob(f"{_CHECKPOINT_PREFIX}*")
        if path.name.removeprefix(_CHECKPOINT_PREFIX).isdigit() and path.is_dir()
    ]
    return sorted((p for p in found if (p / "trainer_state.json").is_file()), key=_step)


def _epoch(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return round(state["epoch"])


def _strip_trainer_state(checkpoint: Path) -> None:
    for pattern in TRAINER_STATE_FILES:
        for path in checkpoint.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def compact_weights(checkpoint: Path) -> None:
    """Store a checkpoint's full-model float32 weights in bf16 (half the disk); a file is
    replaced whole, and one already in bf16 is not touched. LoRA adapters stay as trained."""
    cast = False
    for path in sorted(checkpoint.glob("model*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
            if not any(handle.get_slice(k).get_dtype() == "F32" for k in handle.keys()):  # noqa: SIM118
                continue
        tensors = {
            name: tensor.to(torch.bfloat16) if tensor.dtype == torch.float32 else tensor
            for name, tensor in load_file(path).items()
        }
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
        cast = True
    config_path = checkpoint / "config.json"
    if cast and config_path.is_file():
        config = _read_json(config_path)
        config["dtype"] = "bfloat16"
        config.pop("torch_dtype", None)
        _write_json(config_path, config)


def _keep_weights_only(checkpoint: Path) -> None:
    _strip_trainer_state(checkpoint)
    compact_weights(checkpoint)


def _apply_retention(run_dir: Path, run: TrainingRun, finished: bool, retention: Retention) -> None:
    """Keep per config its weights; keep trainer state only where training may continue."""
    *earlier, latest = _complete_checkpoints(run_dir) or [None]
    for checkpoint in earlier:
        if run.config_for_epoch(_epoch(checkpoint)) is None:
            shutil.rmtree(checkpoint)
        else:
            _keep_weights_only(checkpoint)
    if latest is not None and finished and retention != "resumable":
        _keep_weights_only(latest)


class _Retention(TrainerCallback):
    """Applies the retention setting each time an epoch's checkpoint is written; with `weights`
    retention the run's last epoch is saved without the trainer state nothing will resume."""

    def __init__(self, run: TrainingRun, retention: Retention) -> None:
        self.run, self.retention = run, retention

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.retention == "weights" and round(state.epoch) + 1 >= args.num_train_epochs:
            args.save_only_model = True

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            _apply_retention(Path(args.output_dir), self.run, False, self.retention)


def _write_json(path: Path, payload: Any) -> None:
    """Write through a temporary file so a kill never leaves half a manifest."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _run_manifest(run: TrainingRun, finished: bool) -> dict[str, Any]:
    return {
        "id": run.id,
        "params": dict(run.params),
        "epochs": run.epochs,
        "configs": {str(c.params["epochs"]): c.to_json() for c in run.configs},
        "finished": finished,
    }


def _check_settings(args: CandidateTrainingArguments, data_hash: str) -> None:
    wanted = {**args.fingerprint(), "data_sha256": data_hash}
    path = args.output_dir / "settings.json"
    if not path.is_file():
        if PartialState().is_main_process:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            _write_json(path, wanted)
        PartialState().wait_for_everyone()
        return
    stored = _read_json(path)
    changed = sorted(k for k in wanted.keys() | stored.keys() if wanted.get(k) != stored.get(k))
    if changed:
        details = "; ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)
        raise SettingsError(
            f"{args.output_dir} holds candidates trained with other settings ({details}): "
            "use another output directory"
        )


def _stored_runs(output_dir: Path) -> list[TrainingRun]:
    """The runs an output directory already holds (finished or not), from their manifests."""
    runs = []
    for path in sorted((output_dir / "runs").glob("*/run.json")):
        manifest = _read_json(path)
        configs = sorted(manifest["configs"].items(), key=lambda item: int(item[0]))
        members = tuple(CandidateConfig(c["id"], c["params"]) for _, c in configs)
        runs.append(TrainingRun(manifest["id"], manifest["params"], manifest["epochs"], members))
    return runs


def plan_candidate_runs(
    configs: Sequence[CandidateConfig], args: CandidateTrainingArguments
) -> list[TrainingRun]:
    """The runs that give `configs` their checkpoints in `args.output_dir`.

    A config that a run there already serves is taken from that run (resumed if unfinished),
    even if this space would have grouped it otherwise: within one output directory every config
    is trained once. The other configs are grouped into new runs (`plan_training_runs`).
    """
    serving = {config.id: run for run in _stored_runs(args.output_dir) for config in run.configs}
    stored = {serving[c.id].id: serving[c.id] for c in configs if c.id in serving}
    new = [config for config in configs if config.id not in serving]
    return [*stored.values(), *plan_training_runs(new, args.schedule_horizon)]


class _StopAtEpoch(TrainerCallback):
    """Ends training after epoch `epoch` (its checkpoint is still saved): the run stops early
    with its schedule still spanning all its epochs, so a later call resumes it exactly."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) >= self.epoch:
            control.should_training_stop = True


def trained_epochs(output_dir: Path, run: TrainingRun) -> int:
    """How many epochs of the run have a complete checkpoint in `output_dir` (0: none)."""
    complete = _complete_checkpoints(output_dir / "runs" / run.id)
    return _epoch(complete[-1]) if complete else 0


def train_run(
    run: TrainingRun,
    data: TokenizedData,
    tokenizer: PreTrainedTokenizerBase,
    args: CandidateTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
    until_epoch: int | None = None,
) -> bool:
    """Train one run, resuming from its last finished epoch; False if it had already finished
    (or, with `until_epoch`, already reached that epoch). `until_epoch` stops it after that
    epoch without changing its schedule: the learning rate still follows the run's full
    epochs, so every checkpoint is the one an uninterrupted run writes, and a later call
    continues where this one stopped."""
    run_dir = args.output_dir / "runs" / run.id
    manifest = run_dir / "run.json"
    main_process = PartialState().is_main_process
    target = run.epochs if until_epoch is None else min(until_epoch, run.epochs)
    if manifest.is_file() and _read_json(manifest)["finished"]:
        if main_process:
            _apply_retention(run_dir, run, True, args.retention)
        return False
    complete = _complete_checkpoints(run_dir)
    if complete and _epoch(complete[-1]) >= run.epochs:  # killed before the manifest was done
        if main_process:
            _write_json(manifest, _run_manifest(run, finished=True))
            _apply_retention(run_dir, run, True, args.retention)
        PartialState().wait_for_everyone()
        return True
    if complete and _epoch(complete[-1]) >= target:
        return False
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(manifest, _run_manifest(run, finished=False))
        for partial in set(run_dir.glob(f"{_CHECKPOINT_PREFIX}*")) - set(complete):
            shutil.rmtree(partial)
    PartialState().wait_for_everyone()
    stop = [_StopAtEpoch(target)] if target < run.epochs else []
    trainer = build_trainer(run, data, tokenizer, args, [*callbacks, *stop])
    trainer.train(resume_from_checkpoint=str(complete[-1]) if complete else None)
    finished = target >= run.epochs
    if main_process:
        _write_json(manifest, _run_manifest(run, finished=finished))
        _apply_retention(run_dir, run, finished, args.retention)
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True


def find_checkpoints(output_dir: Path) -> list[CandidateCheckpoint]:
    """Every config checkpoint under an output directory of `train_candidates`."""
    settings_path = output_dir / "settings.json"
    if not settings_path.is_file():
        raise InputError(f"{output_dir}: no settings.json, not an output of `train_candidates`")
    base_model = Path(_read_json(settings_path)["base_model"])
    found = []
    for run in _stored_runs(output_dir):
        run_dir = output_dir / "runs" / run.id
        finished = _read_json(run_dir / "run.json")["finished"]
        for checkpoint in _complete_checkpoints(run_dir):
            epoch = _epoch(checkpoint)
            config = run.config_for_epoch(epoch)
            if config is not None:
                found.append(
                    CandidateCheckpoint(
                        config, checkpoint, base_model, run.id, epoch, _step(checkpoint), finished
                    )
                )
    return found


def check_training_settings(
    records: Sequence[InstructionRecord], args: CandidateTrainingArguments
) -> None:
    """Record (or check) the settings and data every run in `args.output_dir` is trained with;
    done once before training runs are shared out, so workers never race to write the file."""
    _check_settings(args, data_fingerprint(records))


def train_one_run(
    run: TrainingRun,
    records: Sequence[InstructionRecord],
    args: CandidateTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
    until_epoch: int | None = None,
) -> list[CandidateCheckpoint]:
    """Train one run of a plan (`plan_candidate_runs`), resuming a killed one, and return the
    checkpoints of its configs: the unit of work one of several workers claims. `until_epoch`
    stops it after that epoch (`train_run`); only the configs trained so far have one."""
    tokenizer = load_tokenizer(args.base_model)
    data = tokenize_for_training(records, tokenizer, args.max_length)
    if not data.examples:
        raise SettingsError(f"no example fits max_length={args.max_length} tokens")
    _check_settings(args, data_fingerprint(records))
    train_run(run, data, tokenizer, args, callbacks, until_epoch)
    wanted = {config.id for config in run.configs}
    return [c for c in find_checkpoints(args.output_dir) if c.config.id in wanted]


def train_candidates(
    configs: Sequence[CandidateConfig],
    records: Sequence[InstructionRecord],
    args: CandidateTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
    on_run: Callable[[TrainingRun, int, int], None] | None = None,
    wanted: Sequence[CandidateConfig] | None = None,
) -> CandidatesReport:
    """Train every config (finished runs are skipped, a killed one resumes) and report the
    checkpoints of `configs`. `on_run(run, position, total)` is called before each run.

    With `wanted` (configs of `configs`), only the runs that serve them are trained, each up to
    the largest epoch wanted of it (`train_run`'s `until_epoch`); the runs are still planned
    from all of `configs`, so each has the schedule the whole space gives it. The report's
    `epochs_trained` counts the epochs this call trained."""
    tokenizer = load_tokenizer(args.base_model)
    data = tokenize_for_training(records, tokenizer, args.max_length)
    if not data.examples:
        raise SettingsError(f"no example fits max_length={args.max_length} tokens")
    _check_settings(args, data_fingerprint(records))
    runs = plan_candidate_runs(configs, args)
    targets = _targets(runs, wanted)
    runs = [run for run in runs if run.id in targets]
    report = CandidatesReport(
        [], examples=len(data.examples), truncated=data.truncated, dropped=data.dropped
    )
    for position, run in enumerate(runs, start=1):
        if on_run is not None:
            on_run(run, position, len(runs))
        before = trained_epochs(args.output_dir, run)
        trained = train_run(run, data, tokenizer, args, callbacks, targets[run.id])
        report.epochs_trained += trained_epochs(args.output_dir, run) - before
        (report.runs_trained if trained else report.runs_skipped).append(run.id)
    found = {checkpoint.config.id: checkpoint for checkpoint in find_checkpoints(args.output_dir)}
    report.checkpoints = [found[config.id] for config in configs if config.id in found]
    return report


def _targets(
    runs: Sequence[TrainingRun], wanted: Sequence[CandidateConfig] | None
) -> dict[str, int | None]:
    """Run id -> the epoch to train it to (None: all its epochs), for the runs to train."""
    if wanted is None:
        return {run.id: None for run in runs}
    ids = {config.id for config in wanted}
    targets: dict[str, int | None] = {}
    for run in runs:
        epochs = [c.params["epochs"] for c in run.configs if c.id in ids]
        if epochs:
            targets[run.id] = max(epochs)
    return targets


def rebuild_checkpoint(
    config: CandidateConfig,
    space: Sequence[CandidateConfig],
    records: Sequence[InstructionRecord],
    args: CandidateTrainingArguments,
    rebuild_dir: Path,
) -> CandidateCheckpoint:
    """`config`'s model trained again in `rebuild_dir` (resumable there), when its checkpoint
    in `args.output_dir` lost its weights: the same training run (the one stored there, else
    the one `space` plans for it), the same settings, data and seed give the same weights. A
    finished rebuild is reused. Refused if the output directory was trained with other
    settings or data: the rebuild would be another model."""
    recorded = args.output_dir / "settings.json"
    wanted = {**args.fingerprint(), "data_sha256": data_fingerprint(records)}
    if recorded.is_file() and _read_json(recorded) != wanted:
        changed = sorted(k for k, v in _read_json(recorded).items() if wanted.get(k) != v)
        raise SettingsError(
            f"{args.output_dir} was trained with other settings or data ({', '.join(changed)}): "
            f"config {config.id} cannot be trained again as it was"
        )
    runs = [r for r in plan_candidate_runs(space, args) if config.id in {c.id for c in r.configs}]
    if not runs:
        raise SettingsError(f"config {config.id} is not in the run's space")
    rebuild_args = dataclasses.replace(args, output_dir=rebuild_dir)
    tokenizer = load_tokenizer(args.base_model)
    data = tokenize_for_training(records, tokenizer, args.max_length)
    _check_settings(rebuild_args, data_fingerprint(records))
    train_run(runs[0], data, tokenizer, rebuild_args)
    found = {c.config.id: c for c in find_checkpoints(rebuild_dir)}
    return found[config.id]
