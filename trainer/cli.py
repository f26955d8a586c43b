"""`pandalm-train`: fine-tune candidates over a search space and generate their responses."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from judge.io import InputError
from judge.models import ModelNotFoundError
from trainer.builtin_data import MAX_EXAMPLES
from trainer.space import SpaceError, load_space

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console(stderr=True)

SpaceOption = Annotated[
    Path | None,
    typer.Option("--space", help="search space TOML (default: the paper's grid)", exists=True),
]
LoraOption = Annotated[bool, typer.Option("--lora", help="LoRA for configs that set no finetune")]
QloraOption = Annotated[
    bool, typer.Option("--qlora", help="QLoRA (4-bit base) for configs that set no finetune")
]
BUILTIN_HELP = "or 'builtin' for the embedded demo set"


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn known bad-input errors into one clear line and exit status 2."""
    try:
        yield
    except (InputError, SpaceError, ModelNotFoundError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _finetune(lora: bool, qlora: bool) -> str | None:
    if lora and qlora:
        raise SpaceError("--lora and --qlora exclude each other")
    return "lora" if lora else "qlora" if qlora else None


@app.command("space")
def space_command(
    space: SpaceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list of {id, params}")] = False,
    lora: LoraOption = False,
    qlora: QloraOption = False,
) -> None:
    """List a search space's configs and their ids."""
    with _user_errors():
        search_space = load_space(space, _finetune(lora, qlora))
    if as_json:
        typer.echo(json.dumps([config.to_json() for config in search_space.configs], indent=2))
        return
    names = {config_id: name for name, config_id in search_space.names.items()}
    columns = list(dict.fromkeys(k for c in search_space.configs for k in c.params))
    table = Table(title=f"{len(search_space.configs)} configs")
    table.add_column("id", no_wrap=True, min_width=12)
    for column in [*columns, "name"]:
        table.add_column(column)
    for config in search_space.configs:
        values = [str(config.params.get(column, "")) for column in columns]
        table.add_row(config.id, *values, names.get(config.id, ""))
    Console().print(table)


@app.command()
def candidates(
    base: Annotated[str, typer.Option("--base", help="builtin, or a local HF causal-LM dir")],
    data: Annotated[str, typer.Option("--data", help=f"Alpaca JSON/JSONL file, {BUILTIN_HELP}")],
    out: Annotated[Path, typer.Option("--out", help="output directory (resumable)")],
    space: SpaceOption = None,
    lora: LoraOption = False,
    qlora: QloraOption = False,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, help="at most N optimizer steps per epoch (quick runs)"),
    ] = None,
    site_seed: Annotated[int, typer.Option(help="builtin data: the site's shard")] = 0,
    examples: Annotated[
        int, typer.Option(min=1, max=MAX_EXAMPLES, help="builtin data: shard size")
    ] = 256,
    max_length: Annotated[int, typer.Option(min=2, help="tokens per example")] = 1024,
    batch_size: Annotated[int, typer.Option(min=1, help="per device")] = 8,
    gradient_accumulation: Annotated[int, typer.Option(min=1)] = 1,
    seed: int = 42,
    horizon: Annotated[
        Literal["run", "config"], typer.Option(help="schedule spans the run or each config")
    ] = "run",
    retention: Annotated[
        Literal["weights", "resumable"],
        typer.Option(help="keep optimizer state after a run (resumable) or not"),
    ] = "weights",
    deepspeed: Annotated[bool, typer.Option(help="DeepSpeed ZeRO-2 (multi-GPU sites)")] = False,
) -> None:
    """Fine-tune a candidate per config; print a JSON summary of the checkpoints."""
    from transformers.utils import logging as hf_logging

    from judge.progress import progress_bar
    from trainer.builtin_data import make_shard
    from trainer.candidates import CandidateTrainingArguments, resolve_base_model, train_candidates
    from trainer.data import load_instruction_data
    from trainer.progress import RichTrainingProgress

    with _user_errors():
        search_space = load_space(space, _finetune(lora, qlora))
        records = (
            make_shard(site_seed, examples)
            if data == "builtin"
            else load_instruction_data(Path(data))
        )
        args = CandidateTrainingArguments(
            output_dir=out,
            base_model=resolve_base_model(base),
            max_length=max_length,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation,
            seed=seed,
            schedule_horizon=horizon,
            max_steps_per_epoch=max_steps,
            deepspeed_zero2=deepspeed,
            retention=retention,
        )
        hf_logging.disable_progress_bar()
        with progress_bar(console, detail=True) as progress:
            tracker = RichTrainingProgress(progress)
            report = train_candidates(
                search_space.configs, records, args, [tracker], on_run=tracker.start_run
            )
            tracker.finish()
    if report.truncated or report.dropped:
        console.print(
            f"[yellow]{report.truncated} responses truncated and {report.dropped} examples "
            f"dropped at max length {max_length}[/yellow]"
        )
    typer.echo(json.dumps(report.to_json(), indent=2))


@app.command()
def generate(
    checkpoints: Annotated[
        Path, typer.Option("--checkpoints", help="output directory of `candidates`", exists=True)
    ],
    validation: Annotated[
        str,
        typer.Option("--validation", help=f"JSON/JSONL instruction[/input] file, {BUILTIN_HELP}"),
    ],
    out: Annotated[Path, typer.Option("--out", help="responses JSONL (appended, cached)")],
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    validation_examples: Annotated[
        int, typer.Option(min=1, max=MAX_EXAMPLES, help="builtin validation set size")
    ] = 64,
    delete_weights: Annotated[
        bool, typer.Option(help="drop a finished run's checkpoint once its responses are stored")
    ] = False,
) -> None:
    """Greedy responses of every checkpoint to the validation set; reruns recompute nothing."""
    from transformers.utils import logging as hf_logging

    from judge.progress import progress_bar
    from trainer.builtin_data import make_validation_set
    from trainer.candidates import find_checkpoints
    from trainer.data import load_validation_set
    from trainer.generate import generate_responses

    with _user_errors():
        items = (
            make_validation_set(validation_examples)
            if validation == "builtin"
            else load_validation_set(Path(validation))
        )
        found = find_checkpoints(checkpoints)
        if not found:
            raise InputError(f"{checkpoints}: no finished epoch checkpoint yet")
        hf_logging.disable_progress_bar()
        with progress_bar(console, detail=True) as progress:
            total = len(found) * len({item.id for item in items})
            task = progress.add_task("responses", total=total, detail="")
            report = generate_responses(
                found,
                items,
                out,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                delete_weights=delete_weights,
                on_progress=lambda n: progress.advance(task, n),
            )
    console.print(
        f"{report.generated} responses generated, {report.cached} already in {out}"
        + (f", {report.weights_deleted} checkpoints' weights deleted" if delete_weights else "")
    )


ExcludeTestsetOption = Annotated[
    Path | None,
    typer.Option(help="leave out seed tasks whose instruction is in this test set", exists=True),
]


@app.command()
def judge(
    base: Annotated[str, typer.Option("--base", help="builtin, or a local HF causal-LM dir")],
    out: Annotated[Path, typer.Option("--out", help="output directory: the trained judge")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="judge-training JSON/JSONL (PandaLM shape)", exists=True),
    ] = None,
    seed_tasks: Annotated[
        Path | None,
        typer.Option(help="instead of --data: synthetic pairs built from seed tasks", exists=True),
    ] = None,
    exclude_testset: ExcludeTestsetOption = None,
    deepspeed: Annotated[
        Path | None,
        typer.Option(help="DeepSpeed config JSON, e.g. trainer/deepspeed/zero2.json", exists=True),
    ] = None,
    lora: Annotated[
        bool, typer.Option("--lora", help="train a LoRA adapter (large bases)")
    ] = False,
    lora_rank: Annotated[int, typer.Option(min=1)] = 16,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 2e-5,
    epochs: Annotated[float, typer.Option(min=0.0)] = 2.0,
    warmup_ratio: Annotated[float, typer.Option(min=0.0, max=0.99)] = 0.03,
    batch_size: Annotated[int, typer.Option(min=1, help="micro batch per device")] = 2,
    gradient_accumulation: Annotated[int, typer.Option(min=1)] = 8,
    max_length: Annotated[int, typer.Option(min=8, help="tokens per record")] = 1024,
    verdict_loss_weight: Annotated[
        float, typer.Option(min=1.0, help="weight of the verdict token in the loss (1: paper)")
    ] = 1.0,
    over_length: Annotated[
        Literal["drop", "truncate"], typer.Option(help="records over max length")
    ] = "drop",
    swap: Annotated[bool, typer.Option("--swap", help="add every record's mirror")] = False,
    max_steps: Annotated[int | None, typer.Option(min=1, help="stop early (quick runs)")] = None,
    save_steps: Annotated[int, typer.Option(min=1, help="checkpoint interval (resume)")] = 200,
    seed: int = 42,
    eval_testset: Annotated[
        Path | None,
        typer.Option(help="labelled test set judged after training (both orders)", exists=True),
    ] = None,
    eval_mode: Annotated[Literal["score", "generate"], typer.Option()] = "score",
    eval_limit: Annotated[int | None, typer.Option(min=1)] = None,
    local_rank: Annotated[
        int, typer.Option("--local_rank", "--local-rank", hidden=True, help="set by deepspeed")
    ] = -1,
) -> None:
    """Train a PandaLM-format judge (paper defaults; run under torchrun or deepspeed for many
    processes) and print a JSON report."""
    from trainer.judge_builtin_data import build_builtin_judge_records, load_seed_tasks
    from trainer.judge_training import JudgeTrainingArguments, train_judge

    del local_rank  # the launcher also sets LOCAL_RANK, which the Trainer reads
    with _user_errors():
        if (data is None) == (seed_tasks is None):
            raise InputError("give exactly one of --data FILE or --seed-tasks FILE")
        records = None
        if seed_tasks is not None:
            records = build_builtin_judge_records(
                load_seed_tasks(seed_tasks), seed, _testset_instructions(exclude_testset)
            )
        args = JudgeTrainingArguments(
            base_model=Path(base),
            data=data or seed_tasks,  # type: ignore[arg-type]
            output_dir=out,
            deepspeed=deepspeed,
            lora=lora,
            lora_rank=lora_rank,
            learning_rate=learning_rate,
            num_train_epochs=epochs,
            warmup_ratio=warmup_ratio,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation,
            max_length=max_length,
            verdict_loss_weight=verdict_loss_weight,
            over_length=over_length,
            swap_augmentation=swap,
            max_steps=max_steps,
            save_steps=save_steps,
            seed=seed,
            eval_testset=eval_testset,
            eval_mode=eval_mode,
            eval_limit=eval_limit,
        )
        report = train_judge(args, records)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps(report.to_json(), indent=2))


def _testset_instructions(testset: Path | None) -> list[str]:
    from judge.io import read_records

    if testset is None:
        return []
    return [str(record.get("instruction", "")) for _, record in read_records(testset)]


@app.command("judge-data")
def judge_data(
    seed_tasks: Annotated[
        Path, typer.Option(help="seed_tasks.jsonl (instruction, instances)", exists=True)
    ],
    out: Annotated[Path, typer.Option("--out", help="JSONL in PandaLM's training shape")],
    exclude_testset: ExcludeTestsetOption = None,
    seed: int = 42,
) -> None:
    """Build synthetic judge-training pairs (verdicts known by construction) from seed tasks."""
    from trainer.judge_builtin_data import build_builtin_judge_records, load_seed_tasks
    from trainer.judge_data import write_judge_records

    with _user_errors():
        records = build_builtin_judge_records(
            load_seed_tasks(seed_tasks), seed, _testset_instructions(exclude_testset)
        )
        count = write_judge_records(records, out)
    console.print(f"{count} judge-training records written to {out}")


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", help="transformers LLaMA-family model dir")],
    out: Annotated[Path, typer.Option("--out", help="FILE.gguf")],
    to: Annotated[Literal["gguf"], typer.Option("--to", help="target format")] = "gguf",
    quant: Annotated[Literal["f16", "q8_0", "q4_k_m"], typer.Option("--quant")] = "q8_0",
    threads: Annotated[int, typer.Option(min=0, help="quantizer threads (0: all cores)")] = 0,
) -> None:
    """Convert a trained judge to GGUF (f16, or quantized by llama.cpp) for `gguf:FILE` judges."""
    from judge.export import export_gguf

    del to  # GGUF is the only target
    with _user_errors():
        export_gguf(model, out, quant, threads)
    console.print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {quant})")


@app.command("package-adapter")
def package_adapter_command(
    adapter: Annotated[Path, typer.Option("--adapter", help="a LoRA adapter dir (judge --lora)")],
    out: Annotated[Path, typer.Option("--out", help="the folder to write the packaged adapter to")],
    rank: Annotated[
        int | None, typer.Option(min=1, help="cut every update to this rank (truncated SVD)")
    ] = None,
) -> None:
    """Write a LoRA adapter as the package ships the builtin judge: fp16, optionally lower rank."""
    from trainer.judge_training import package_adapter

    with _user_errors():
        weights = package_adapter(adapter, out, rank)
    console.print(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB)")


@app.command("builtin-judge")
def builtin_judge(
    testset: Annotated[
        Path, typer.Option(help="PandaLM's dev split (human labels; trained on)", exists=True)
    ],
    out: Annotated[Path, typer.Option("--out", help="where head.json and README.md go")] = Path(
        "judge/builtin_judge"
    ),
    preferences: Annotated[
        list[Path] | None,
        typer.Option("--preferences", help="preference JSONL; only use=train rows", exists=True),
    ] = None,
    seed_tasks: Annotated[
        Path | None,
        typer.Option(
            help="Alpaca seed_tasks.jsonl: synthetic pairs with broken losers", exists=True
        ),
    ] = None,
    synthetic_weight: Annotated[float, typer.Option(min=0.0)] = 0.3,
    cache: Annotated[Path, typer.Option(help="encoding cache (resume)")] = Path(
        "build/builtin-judge/encodings.sqlite"
    ),
    folds: Annotated[int, typer.Option(min=2)] = 5,
    threads: Annotated[int, typer.Option(min=1)] = 2,
) -> None:
    """Train the builtin judge's head on frozen SmolLM2 encodings; dev figures out-of-fold."""
    from trainer.builtin_judge import BuiltinJudgeArguments, train_builtin_judge

    with _user_errors():
        args = BuiltinJudgeArguments(
            testset=testset,
            out=out,
            preferences=list(preferences or []),
            seed_tasks=seed_tasks,
            synthetic_weight=synthetic_weight,
            cache=cache,
            folds=folds,
            threads=threads,
        )
        record = train_builtin_judge(args, console)
    typer.echo(json.dumps(record["dev_out_of_fold"], indent=2))
