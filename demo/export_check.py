"""The demo's last step: one site exports the chosen model and the demo shows it is usable.

`pandalm-agent export --merge --gguf q8_0` on the first site, then the merged directory is loaded
with transformers' `AutoModelForCausalLM` and the GGUF with llama.cpp (what `pandalm-judge` runs),
and each answers one of the site's validation prompts, greedily. A real site does the same with
its own command; the demo runs the library call so that its output can show the answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agent.config import load_site_config
from agent.export import export_model
from agent.worker import validation_items

EXPORT_QUANT = "q8_0"
ANSWER_TOKENS = 12


def _transformers_answer(model_dir: Path, prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    encoded = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**encoded, max_new_tokens=ANSWER_TOKENS, do_sample=False)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def _llama_cpp_answer(gguf: Path, prompt: str) -> str:
    from llama_cpp import Llama

    model = Llama(model_path=str(gguf), n_ctx=512, n_threads=1, verbose=False)
    try:
        reply = model(prompt, max_tokens=ANSWER_TOKENS, temperature=0.0)
        return str(reply["choices"][0]["text"])
    finally:
        model.close()


def export_and_load(site_dir: Path, run_key: str, out: Path) -> dict[str, Any]:
    """Export the run's chosen model from the site in `site_dir` into `out` (replaced), load both
    forms and let each answer the site's first validation prompt; what summary.json records."""
    site = load_site_config(site_dir / "site.toml")
    if out.exists():
        shutil.rmtree(out)
    report = export_model(site, run_key, out, merge=True, gguf=EXPORT_QUANT)
    item = validation_items(site)[0]
    assert report.gguf is not None  # asked for above
    return {
        "site": site.name,
        "config_id": report.config_id,
        "form": report.form,
        "rebuilt": report.rebuilt,
        "directory": str(out),
        "mib": round(report.bytes / 2**20, 1),
        "gguf": str(report.gguf),
        "prompt": item.instruction,
        "transformers_answer": _transformers_answer(out, item.prompt()),
        "llama_cpp_answer": _llama_cpp_answer(report.gguf, item.prompt()),
    }
