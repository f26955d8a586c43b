"""Judge-training throughput per process on CPU for the builtin SmolLM2-135M base (issue 4).

Trains on synthetic seed-task records (built from the Alpaca seed tasks when `--seed-tasks` exists,
else from generated stand-in tasks) through the same Trainer as `pandalm-train judge`: micro
batch 2, no accumulation, max length 1024, LoRA (rank 16) and full fine-tuning, each in its own
process with `--threads` torch threads. The first step (warm-up) is not timed. Prints tokens per
second (real tokens, and padded tokens the model computed) and seconds per micro batch, so a run
can be sized: epoch seconds ~ tokens in the data / tokens per second / processes.

    python bench/bench_judge_training.py [--threads 1] [--steps 6] [--modes lora,full]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED_SEEDS = Path(__file__).resolve().parents[2] / "shared/data/alpaca/seed_tasks.jsonl"
BATCH = 2


def _records(seed_tasks: Path):
    from trainer.judges.synthetic import SeedTask, build_synthetic_records, load_seed_tasks

    if seed_tasks.is_file():
        tasks = load_seed_tasks(seed_tasks)
    else:  # a stand-in of similar length, so the bench runs without the shared data
        tasks = [
            SeedTask(f"Describe item {i} in two sentences.", "", f"Item {i} is useful. " * 12)
            for i in range(40)
        ]
    return build_synthetic_records(tasks, seed=0)


def measure(mode: str, steps: int, threads: int, seed_tasks: Path) -> dict:
    import torch

    from judge.models import builtin_base_hf_dir
    from trainer.judges.training import JudgeTrainingArguments, train_judge
    from trainer.progress import StepTimer

    torch.set_num_threads(threads)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "judge"
        args = JudgeTrainingArguments(
            base_model=builtin_base_hf_dir(),
            data=seed_tasks,
            output_dir=out,
            lora=mode == "lora",
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            max_steps=steps + 1,
            save_steps=10**6,
            logging_steps=10**6,
            swap_augmentation=True,
        )
        report = train_judge(args, _records(seed_tasks), [timer])
        from trainer.candidates import load_tokenizer
        from trainer.judges.data import prepare_judge_data

        data, _ = prepare_judge_data(
            _records(seed_tasks), load_tokenizer(args.base_model), swap=True
        )
        batches = (out / "examples" / "rank-0.txt").read_text().split("\n")[1 : steps + 1]
    lengths = [[len(data.examples[int(i)]["input_ids"]) for i in b.split()] for b in batches]
    real = sum(map(sum, lengths))
    padded = sum(len(b) * -(-max(b) // 8) * 8 for b in lengths)
    seconds = sum(timer.times[1 : steps + 1])
    return {
        "mode": mode,
        "threads": threads,
        "records": report.filter_report.kept,
        "seconds_per_micro_batch": statistics.mean(timer.times[1 : steps + 1]),
        "tokens_per_second": real / seconds,
        "padded_tokens_per_second": padded / seconds,
        "mean_tokens_per_record": real / sum(map(len, lengths)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--steps", type=int, default=6, help="timed micro batches")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--seed-tasks", type=Path, default=SHARED_SEEDS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        result = measure(options.child, options.steps, options.threads, options.seed_tasks)
        print("RESULT " + json.dumps(result), flush=True)
        return
    for mode in options.modes.split(","):
        command = [sys.executable, __file__, "--child", mode, "--steps", str(options.steps)]
        command += ["--threads", str(options.threads), "--seed-tasks", str(options.seed_tasks)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        result = json.loads(lines[-1].removeprefix("RESULT "))
        print(
            f"{mode:>4} ({result['threads']} thread/process, micro batch {BATCH}, "
            f"{result['mean_tokens_per_record']:.0f} tokens/record): "
            f"{result['tokens_per_second']:.0f} tokens/s per process "
            f"({result['padded_tokens_per_second']:.0f} padded), "
            f"{result['seconds_per_micro_batch']:.2f} s/micro batch, "
            f"peak RSS {result['peak_rss_mib']:.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
