"""`pandalm-train`: fine-tune candidates over a search space and generate their responses."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from common.cli import cli_app, progress_bar, user_errors
from common.records import InputError
from common.space import SpaceError, load_space
from judge.models import ModelNotFoundError
from trainer.arguments import (
    BASE_HELP,
    BuiltinJudgeArguments,
    CandidateTrainingArguments,
    JudgeTrainingArguments,
)
from trainer.demo_tasks import MAX_EXAMPLES
from trainer.options import dataclass_options

app = cli_app(__doc__)
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


_user_errors = partial(user_errors, console, InputError, SpaceError, ModelNotFoundError)
"""Known bad input: one clear line and exit status 2."""


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
@dataclass_options(CandidateTrainingArguments)
def candidates(
    base: Annotated[str, typer.Option("--base", help=BASE_HELP)],
    data: Annotated[str, typer.Option("--data", help=f"Alpaca JSON/JSONL file, {BUILTIN_HELP}")],
    settings: dict[str, Any],
    space: SpaceOption = None,
    lora: LoraOption = False,
    qlora: QloraOption = False,
    site_seed: Annotated[int, typer.Option(help="builtin data: the site's shard")] = 0,
    examples: Annotated[
        int, typer.Option(min=1, max=MAX_EXAMPLES, help="builtin data: shard size")
    ] = 256,
) -> None:
    """Fine-tune a candidate per config; print a JSON summary of the checkpoints."""
    from transformers.utils import logging as hf_logging

    from trainer.candidates import resolve_base_model, train_candidates
    from trainer.data import load_instruction_data
    from trainer.demo_tasks import make_shard
    from trainer.progress import RichTrainingProgress

    with _user_errors():
        search_space = load_space(space, _finetune(lora, qlora))
        records = (
            make_shard(site_seed, examples)
            if data == "builtin"
            else load_instruction_data(Path(data))
        )
        args = CandidateTrainingArguments(base_model=resolve_base_model(base), **settings)
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
            f"dropped at max length {args.max_length}[/yellow]"
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

    from trainer.candidates import find_checkpoints
    from trainer.data import load_validation_set
    from trainer.demo_tasks import make_validation_set
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
@dataclass_options(JudgeTrainingArguments)
def judge(
    settings: dict[str, Any],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="judge-training JSON/JSONL (PandaLM shape)", exists=True),
    ] = None,
    seed_tasks: Annotated[
        Path | None,
        typer.Option(help="instead of --data: synthetic pairs built from seed tasks", exists=True),
    ] = None,
    exclude_testset: ExcludeTestsetOption = None,
    local_rank: Annotated[
        int, typer.Option("--local_rank", "--local-rank", hidden=True, help="set by deepspeed")
    ] = -1,
) -> None:
    """Train a PandaLM-format judge (paper defaults; run under torchrun or deepspeed for many
    processes) and print a JSON report."""
    from trainer.judges.synthetic import build_synthetic_records, load_seed_tasks
    from trainer.judges.training import train_judge

    del local_rank  # the launcher also sets LOCAL_RANK, which the Trainer reads
    with _user_errors():
        if (data is None) == (seed_tasks is None):
            raise InputError("give exactly one of --data FILE or --seed-tasks FILE")
        records = None
        if seed_tasks is not None:
            records = build_synthetic_records(
                load_seed_tasks(seed_tasks),
                settings["seed"],
                _testset_instructions(exclude_testset),
            )
        args = JudgeTrainingArguments(data=data or seed_tasks, **settings)  # type: ignore[arg-type]
        report = train_judge(args, records)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps(report.to_json(), indent=2))


def _testset_instructions(testset: Path | None) -> list[str]:
    from common.records import read_records

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
    from trainer.judges.data import write_judge_records
    from trainer.judges.synthetic import build_synthetic_records, load_seed_tasks

    with _user_errors():
        records = build_synthetic_records(
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
    """Write a LoRA judge adapter as a package would ship it: fp16, optionally lower rank."""
    from trainer.judges.training import package_adapter

    with _user_errors():
        weights = package_adapter(adapter, out, rank)
    console.print(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB)")


@app.command("builtin-judge")
@dataclass_options(BuiltinJudgeArguments)
def builtin_judge(settings: dict[str, Any]) -> None:
    """Train the builtin judge on human preference pairs; every figure held out (dev split
    out-of-fold, each source left out, the eval rows), next to the rules."""
    from trainer.judges.builtin import held_out_rows, train_builtin_judge

    with _user_errors():
        args = BuiltinJudgeArguments(**settings)
        record = train_builtin_judge(args, console)
    typer.echo("\n".join(held_out_rows(record["held_out"])))
