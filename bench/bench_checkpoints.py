"""Candidate checkpoint size on disk for the builtin SmolLM2-135M base (issue 14).

Trains one full fine-tuning config and one LoRA config (rank 8) of two epochs each through
`train_candidates`, as a site does (AdamW, one optimizer step per epoch: the size does not
depend on the step count), and reports, per fine-tuning method, the peak size of the output
directory while training (sampled every 20 ms) and what stays on disk per config afterwards.
Only the public trainer API is used, so the same script measures any version of the trainer:

    PYTHONPATH=. python bench/bench_checkpoints.py [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
from pathlib import Path

MIB = 1024 * 1024


def directory_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # removed while walking (retention)
            total += item.stat().st_size if item.is_file() else 0
    return total


class PeakSize:
    """Samples a directory's size in a thread; `peak` is the largest seen."""

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        self.path, self.interval, self.peak = path, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, directory_size(self.path))

    def __enter__(self) -> PeakSize:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, directory_size(self.path))


def measure(finetune: str) -> dict:
    from common.space import parse_space
    from judge.models import builtin_base_hf_dir
    from trainer.candidates import CandidateTrainingArguments, train_candidates
    from trainer.demo_tasks import make_shard

    extra = 'finetune = ["lora"]\nlora_rank = 8\n' if finetune == "lora" else ""
    space = 'optimizer = "adamw"\nlearning_rate = 2e-5\nscheduler = "cosine"\nepochs = [1, 2]\n'
    configs = list(parse_space("[grid]\n" + space + extra).configs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "candidates"
        args = CandidateTrainingArguments(
            out, builtin_base_hf_dir(), max_length=64, per_device_train_batch_size=2,
            max_steps_per_epoch=1,
        )  # fmt: skip
        out.mkdir()
        with PeakSize(out) as peak:
            report = train_candidates(configs, make_shard(0, 8), args)
        kept = {c.config.id: directory_size(c.path) for c in report.checkpoints}
        weights = {
            c.config.id: sum(p.stat().st_size for p in c.path.glob("*.safetensors"))
            for c in report.checkpoints
        }
    return {
        "finetune": finetune,
        "configs": len(configs),
        "peak_mib": peak.peak / MIB,
        "kept_mib_per_config": max(kept.values()) / MIB,
        "weights_mib_per_config": max(weights.values()) / MIB,
        "kept_mib_total": sum(kept.values()) / MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = [measure(finetune) for finetune in ("full", "lora")]
    print("\n".join(map(summary, results)))
    print(json.dumps(results))


def summary(r: dict) -> str:
    """One fine-tuning method's figures in a line."""
    return (
        f"{r['finetune']:>4}: peak {r['peak_mib']:.0f} MiB while training {r['configs']} "
        f"configs; kept per config {r['kept_mib_per_config']:.1f} MiB (weights "
        f"{r['weights_mib_per_config']:.1f} MiB), {r['kept_mib_total']:.1f} MiB in all"
    )


if __name__ == "__main__":
    main()
