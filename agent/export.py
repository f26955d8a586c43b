"""`pandalm-agent export`: the model of the config a run chose, written for deployment.

The chosen config is the one in the run's result (`query.result`, agent/results.py). Its
checkpoint is taken from the candidates directory; a full fine-tuning candidate whose weights
were deleted after generation (`keep_weights = false`) is trained again from the same training
run, settings, data and seed (trainer.candidates.rebuild_checkpoint: the trainer is
deterministic, so the weights are those that wrote the judged responses). LoRA and QLoRA
adapters are always kept. The output directory gets the adapter (or the full model), or with
`merge` the base with the adapter merged as a standard transformers directory, optionally a GGUF
for llama.cpp (judge/export.py), and a README.md model card.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Session

from agent.config import SiteConfig
from agent.db import SiteRun, open_database
from agent.results import SiteOutcome, site_result
from agent.worker import candidate_arguments, training_records, validation_items
from common.space import CandidateConfig

if TYPE_CHECKING:
    from trainer.candidates import CandidateCheckpoint

TRAINER_FILES = ("trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt")
"""What a checkpoint holds for the trainer, not for the model (left out of an export)."""
REBUILD_DIR = "rebuilt"
"""Where, under the site's data directory, winners whose weights were deleted are retrained."""


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says why, in one line."""


@dataclass(frozen=True)
class ExportReport:
    out: Path
    config_id: str
    form: str
    """`adapter`, `merged` or `full model`."""
    rebuilt: bool
    """Trained again because the candidate's weights had been deleted."""
    gguf: Path | None
    bytes: int


def free_bytes(path: Path) -> int:
    """Free space where `path` (or its nearest existing parent) lives."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _outcome(site: SiteConfig, run_key: str) -> tuple[SiteRun, SiteOutcome]:
    engine = open_database(site.database_url)
    with Session(engine) as session:
        run = session.get(SiteRun, run_key)
    if run is None:
        raise ExportError(f"{site.source}: site {site.name} has no run {run_key!r}")
    outcome = site_result(engine, run_key)
    if outcome is None:
        raise ExportError(
            f"run {run_key!r}: no result from the coordinator yet (the run has not finished, "
            "or this site has not been told)"
        )
    return run, outcome


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty directory")


def winner_checkpoint(site: SiteConfig, outcome: SiteOutcome) -> tuple[CandidateCheckpoint, bool]:
    """The chosen config's checkpoint with its weights, and whether it had to be retrained."""
    from trainer.candidates import find_checkpoints, rebuild_checkpoint

    config = CandidateConfig(outcome.best_id, outcome.best_params)
    for directory in (site.candidates_dir, site.data_dir / REBUILD_DIR):
        if (directory / "settings.json").is_file():
            for checkpoint in find_checkpoints(directory):
                usable = checkpoint.run_finished and checkpoint.has_weights
                if checkpoint.config.id == config.id and usable:
                    return checkpoint, directory != site.candidates_dir
    space = [CandidateConfig(i, p) for i, p in zip(outcome.config_ids, outcome.params, strict=True)]
    records, args = training_records(site), candidate_arguments(site)
    rebuilt = rebuild_checkpoint(config, space, records, args, site.data_dir / REBUILD_DIR)
    return rebuilt, True


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _copy_model_files(checkpoint: Path, out: Path) -> None:
    """The checkpoint's model (or adapter), tokenizer and config files, without trainer state."""
    out.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        if path.is_file() and path.name not in TRAINER_FILES and not path.name.startswith("rng_"):
            shutil.copy2(path, out / path.name)


def _merge(checkpoint: CandidateCheckpoint, out: Path) -> None:
    """The base with the adapter merged (peft `merge_and_unload`) as a transformers directory."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.candidates import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(
        checkpoint.base_model, local_files_only=True, dtype=torch.float32
    )
    merged = PeftModel.from_pretrained(base, checkpoint.path).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    load_tokenizer(checkpoint.path).save_pretrained(out)


def _needed_bytes(checkpoint: CandidateCheckpoint, merge: bool, gguf: str | None) -> int:
    """A generous estimate of what the export writes: the checkpoint, plus a float32 base for a
    merge, plus a GGUF (f16 first, then the quantized file)."""
    base = _size(checkpoint.base_model) if checkpoint.config.get("finetune") != "full" else 0
    model = _size(checkpoint.path) + base
    return model + (base if merge or gguf else 0) + (model if gguf else 0)


def write_model(checkpoint: CandidateCheckpoint, out: Path, merge: bool, gguf: str | None) -> str:
    """The model into `out` (and a GGUF beside it); what form it took."""
    finetune = checkpoint.config.get("finetune")
    if finetune != "full" and merge:
        _merge(checkpoint, out)
        form = "merged"
    else:
        _copy_model_files(checkpoint.path, out)
        form = "full model" if finetune == "full" else "adapter"
    if gguf is not None:
        from judge.export import export_gguf

        if form == "adapter":  # llama.cpp reads a whole model: merge into a scratch directory
            with tempfile.TemporaryDirectory(dir=out) as scratch:
                _merge(checkpoint, Path(scratch))
                export_gguf(Path(scratch), out / f"model-{gguf}.gguf", gguf)  # type: ignore[arg-type]
        else:
            export_gguf(out, out / f"model-{gguf}.gguf", gguf)  # type: ignore[arg-type]
    return form


def export_model(
    site: SiteConfig, run_key: str, out: Path, merge: bool = False, gguf: str | None = None
) -> ExportReport:
    """Write the chosen config's model of `run_key` and its model card into `out`."""
    from judge.export import QUANTS

    if gguf is not None and gguf not in QUANTS:
        raise ExportError(f"--gguf {gguf}: not one of {', '.join(QUANTS)}")
    run, outcome = _outcome(site, run_key)
    _check_out(out)
    checkpoint, rebuilt = winner_checkpoint(site, outcome)
    needed, free = _needed_bytes(checkpoint, merge, gguf), free_bytes(out)
    if needed > free:
        raise ExportError(
            f"{out}: not enough free space (about {needed / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free)"
        )
    form = write_model(checkpoint, out, merge, gguf)
    gguf_path = out / f"model-{gguf}.gguf" if gguf is not None else None
    card = model_card(site, run, outcome, form, rebuilt, gguf_path)
    (out / "README.md").write_text(card, encoding="utf-8")
    return ExportReport(out, outcome.best_id, form, rebuilt, gguf_path, _size(out))


def model_card(
    site: SiteConfig,
    run: SiteRun,
    outcome: SiteOutcome,
    form: str,
    rebuilt: bool,
    gguf: Path | None,
) -> str:
    """The README.md of an export: which run chose what, on which data, by what evidence."""
    m = outcome.message
    wins, ties, losses = m.best_record
    items = min(run.validation_items, len(validation_items(site)))
    lines = [
        f"# {outcome.best_id}: the config federated run `{run.run_key}` chose",
        "",
        f"Exported by site `{site.name}` with `pandalm-agent export` ({form}"
        + (", retrained from the run's seed: its weights had been deleted" if rebuilt else "")
        + (f"; GGUF for llama.cpp: `{gguf.name}`" if gguf else "")
        + ").",
        "",
        "## Config",
        "",
        "| hyperparameter | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in sorted(outcome.best_params.items())),
        f"| base model | `{candidate_arguments(site).base_model}` |",
        "",
        "## Data at this site",
        "",
        f"- training examples: {len(training_records(site))}",
        f"- validation items judged: {items}",
        "",
        "## The federation",
        "",
        f"- sites that took part to the end: {m.sites} (this site: `{site.name}`)",
        f"- configs in the search space: {len(outcome.config_ids)}",
        f"- comparisons decided by evidence: {m.decided}; by the tie-break: {m.tie_breaks}",
        f"- the chosen config's comparisons: {wins} won, {ties} undecided, {losses} lost",
        f"- its judged items summed over the sites: {outcome.describe_items()}",
        f"- baseline: {outcome.describe_baseline()}",
        "",
        "Only win/tie/loss tallies left the sites; no text or data of any site is in this card.",
        "",
    ]
    return "\n".join(lines)
