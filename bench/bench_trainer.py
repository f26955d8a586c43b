"""Candidate training and generation cost of the builtin SmolLM2-135M base here (issue 3).

Training: seconds per optimizer step and peak RSS, full fine-tuning vs LoRA (rank 8), AdamW,
sequences of exactly 128 tokens, batch 8, through the same Trainer as `pandalm-train candidates`.
Generation: greedy new tokens per second at batch 8 vs batch 1 (every sequence is made to run to
`--new-tokens`, so early EOS does not flatter either). Each measurement runs in its own process
so that its peak RSS is its own; the first steps (warm-up) are not timed.

    python bench/bench_trainer.py [--threads 1] [--steps 5] [--new-tokens 32] [--prompts 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN, BATCH, WARMUP_STEPS = 128, 8, 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_training(finetune: str, steps: int) -> dict:
    from common.space import CandidateConfig, plan_training_runs
    from judge.models import builtin_base_hf_dir
    from trainer.candidates import CandidateTrainingArguments, build_trainer, load_tokenizer
    from trainer.data import TokenizedData
    from trainer.demo_tasks import make_shard
    from trainer.progress import StepTimer

    base = builtin_base_hf_dir()
    tokenizer = load_tokenizer(base)
    text = "\n\n".join(r.prompt() + r.output for r in make_shard(0, 400))
    ids = tokenizer(text)["input_ids"]
    blocks = [ids[i : i + SEQ_LEN] for i in range(0, BATCH * steps * SEQ_LEN, SEQ_LEN)]
    assert all(len(block) == SEQ_LEN for block in blocks), "the demo text is too short"
    data = TokenizedData(
        [{"input_ids": b, "attention_mask": [1] * SEQ_LEN, "labels": b} for b in blocks], 0, 0
    )
    params = {"optimizer": "adamw", "learning_rate": 2e-5, "scheduler": "cosine", "epochs": 1}
    if finetune != "full":
        params["finetune"] = finetune
    (run,) = plan_training_runs([CandidateConfig.from_params(params)])
    with tempfile.TemporaryDirectory() as out:
        args = CandidateTrainingArguments(
            Path(out), base, max_length=SEQ_LEN, per_device_train_batch_size=BATCH
        )
        timer = StepTimer()
        trainer = build_trainer(run, data, tokenizer, args, [timer])
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        trainer.train()
    timed = timer.times[WARMUP_STEPS:]
    return {
        "finetune": finetune,
        "trainable_params": trainable,
        "steps_timed": len(timed),
        "s_per_step": statistics.mean(timed),
        "s_per_step_min": min(timed),
        "peak_rss_mib": peak_rss_mib(),
    }


def measure_generation(new_tokens: int, prompts: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from judge.models import builtin_base_hf_dir
    from trainer.candidates import load_tokenizer
    from trainer.demo_tasks import make_validation_set

    base = builtin_base_hf_dir()
    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True).eval()
    texts = [item.prompt() for item in make_validation_set(prompts)]
    settings = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    result = {"new_tokens": new_tokens, "prompts": prompts}
    for batch_size in (1, BATCH):
        start = time.perf_counter()
        generated = 0
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                encoded = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True)
                output = model.generate(**encoded, generation_config=settings)
                generated += output[:, encoded["input_ids"].shape[1] :].numel()
        result[f"tokens_per_s_batch{batch_size}"] = generated / (time.perf_counter() - start)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per training mode")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--measure", choices=["full", "lora", "generation"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        import torch

        torch.set_num_threads(args.threads)
        if args.measure == "generation":
            print(json.dumps(measure_generation(args.new_tokens, args.prompts)))
        else:
            print(json.dumps(measure_training(args.measure, args.steps)))
        return

    results = {}
    for measure in ("full", "lora", "generation"):
        command = [sys.executable, __file__, "--measure", measure, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[measure] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{measure}: {results[measure]}", file=sys.stderr)
    full, lora, gen = results["full"], results["lora"], results["generation"]
    print(f"torch threads {args.threads}, seq {SEQ_LEN}, batch {BATCH}")
    for r in (full, lora):
        print(
            f"{r['finetune']:>5}: {r['s_per_step']:.2f} s/step (min {r['s_per_step_min']:.2f}, "
            f"{r['steps_timed']} steps), peak RSS {r['peak_rss_mib']:.0f} MiB, "
            f"{r['trainable_params'] / 1e6:.2f} M trainable"
        )
    print(
        f"generation ({gen['new_tokens']} new tokens, {gen['prompts']} prompts): "
        f"{gen['tokens_per_s_batch1']:.1f} tok/s at batch 1, "
        f"{gen[f'tokens_per_s_batch{BATCH}']:.1f} tok/s at batch {BATCH}, "
        f"peak RSS {gen['peak_rss_mib']:.0f} MiB"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
