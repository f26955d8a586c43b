"""Export a transformers LLaMA-family checkpoint to GGUF for llama.cpp judges on CPU sites.

The GGUF is written with the `gguf` package (llama.cpp's own Python writer): LLaMA metadata, the
tokenizer (byte-level BPE from `tokenizer.json`, or SentencePiece from `tokenizer.model`) and the
weights in f16, with the query/key rows permuted from the transformers rotary layout to
llama.cpp's, as llama.cpp's `convert_hf_to_gguf.py` does. q8_0 and q4_k_m are then made from the
f16 file by llama.cpp's quantizer (`llama_model_quantize` in llama-cpp-python). Nothing is
downloaded; only the local model directory is read.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.records import InputError

__all__ = ["QUANTS", "ExportError", "Quant", "export_gguf", "write_f16_gguf"]

Quant = Literal["f16", "q8_0", "q4_k_m"]
QUANTS: tuple[str, ...] = ("f16", "q8_0", "q4_k_m")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)

# llama.cpp pre-tokenizer names for the byte-level BPE pre-tokenizers we can recognize.
_GPT2_PRE = "gpt-2"


class ExportError(InputError):
    """A model this exporter cannot convert, or a failed conversion."""


def _config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: not a transformers model directory (no config.json)")
    config = json.loads(path.read_text())
    architectures = config.get("architectures") or []
    if not set(architectures) & set(LLAMA_ARCHITECTURES):
        raise ExportError(
            f"{model_dir}: architecture {architectures} is not LLaMA-family "
            f"({', '.join(LLAMA_ARCHITECTURES)}); use llama.cpp's convert_hf_to_gguf.py"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ExportError(f"{model_dir}: rope scaling {rope.get('rope_type')!r} is not supported")
    return config


def _permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers' half-split rotary rows -> llama.cpp's interleaved pairs, per head."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no *.safetensors weights")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, handle.get_tensor(name).float().numpy()


def _bpe_pre_tokenizer(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer; only GPT-2's is recognized here."""
    spec = json.loads((model_dir / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return _GPT2_PRE
    raise ExportError(
        f"{model_dir}: pre-tokenizer {json.dumps(spec)[:200]} is not one this exporter knows; "
        "use llama.cpp's convert_hf_to_gguf.py"
    )


def _add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> None:
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if (model_dir / "tokenizer.model").is_file():  # SentencePiece (LLaMA-1/2, PandaLM-7B)
        vocab = gguf.SentencePieceVocab(model_dir)
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
    else:
        by_id = {index: text for text, index in tokenizer.get_vocab().items()}
        added = tokenizer.added_tokens_decoder
        tokens, types = [], []
        for index in range(vocab_size):
            if index not in by_id:
                tokens.append(f"[PAD{index}]")
                types.append(gguf.TokenType.UNUSED)
            elif index in added:
                tokens.append(by_id[index])
                special = added[index].special
                types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
            else:
                tokens.append(by_id[index])
                types.append(gguf.TokenType.NORMAL)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_bpe_pre_tokenizer(model_dir))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bool(probe) and bos is not None and probe[0] == bos)
    eos = tokenizer.eos_token_id
    writer.add_add_eos_token(bool(probe) and eos is not None and probe[-1] == eos)


def write_f16_gguf(model_dir: Path, out: Path) -> Path:
    """Write `model_dir` (a LLaMA-family transformers checkpoint) as an f16 GGUF at `out`."""
    import gguf

    config = _config(model_dir)
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, model_dir, config["vocab_size"])
    tied = config.get("tie_word_embeddings", False)
    for name, weight in _tensors(model_dir):
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        if name.endswith("self_attn.q_proj.weight"):
            weight = _permute_rotary(weight, heads)
        elif name.endswith("self_attn.k_proj.weight"):
            weight = _permute_rotary(weight, kv_heads)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ExportError(f"{model_dir}: no GGUF name for tensor {name!r}")
        writer.add_tensor(target, weight.astype(np.float16 if weight.ndim > 1 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _quantize(source: Path, out: Path, quant: Quant, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    }[quant]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise ExportError(f"llama.cpp could not quantize {source} to {quant} (status {status})")


def export_gguf(model_dir: Path, out: Path, quant: Quant = "q8_0", threads: int = 0) -> Path:
    """HF checkpoint -> f16 GGUF -> `quant` (q8_0, q4_k_m, or f16 as is), written atomically.

    q4_k_m needs rows that are multiples of 256; llama.cpp quantizes narrower tensors (tiny
    models) with a fallback type and says so on stderr.
    """
    if quant not in QUANTS:
        raise ExportError(f"quant must be one of {QUANTS}, got {quant!r}")
    model_dir, out = Path(model_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        f16 = write_f16_gguf(model_dir, work / "model-f16.gguf")
        if quant == "f16":
            os.replace(f16, out)
        else:
            quantized = work / f"model-{quant}.gguf"
            _quantize(f16, quantized, quant, threads or (os.cpu_count() or 1))
            os.replace(quantized, out)
    finally:
        for leftover in work.glob("*"):
            leftover.unlink()
        work.rmdir()
    return out
