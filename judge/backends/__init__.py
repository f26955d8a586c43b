"""Judge specs (`builtin`, `gguf:PATH`, `hf:PATH?quant=8bit|4bit&dtype=bf16`,
`openai:URL?model=NAME`) and loading."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from judge.backends.base import GenerationSettings, JudgeBackend
from judge.models import ModelNotFoundError

__all__ = [
    "GenerationSettings",
    "JudgeBackend",
    "JudgeSpec",
    "SpecError",
    "check_spec_form",
    "load_backend",
    "parse_spec",
]

_OPTIONS = {
    "builtin": {"threads": int},
    "gguf": {"threads": int, "ctx": int},
    "hf": {"quant": str, "dtype": str, "batch": int},
    "openai": {"model": str, "concurrency": int, "scoring": str, "logprobs": int, "timeout": int},
}
SPEC_FORMS = "builtin, gguf:PATH, hf:PATH[?quant=8bit|4bit] or openai:URL[?model=NAME]"


class SpecError(ValueError):
    """A judge spec string that names no usable judge."""


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed judge spec: backend kind, model path (the server's URL for `openai`) and
    options."""

    kind: str
    path: Path | str
    options: dict[str, int | str] = field(default_factory=dict)

    @property
    def pointwise(self) -> bool:
        """Whether the judge scores each response on its own (judge/pointwise.py), so a pair
        costs no forward pass once both responses are scored."""
        return self.kind == "builtin"


def check_spec_form(spec: str) -> tuple[str, str, dict[str, int | str]]:
    """A spec's kind, location and options; raises SpecError for a malformed spec, without
    looking for the model (a config file is read before its judge model need be there)."""
    if spec == "builtin" or spec.startswith("builtin?"):
        kind, rest = "builtin", spec
    else:
        kind, sep, rest = spec.partition(":")
        if not sep or kind not in _OPTIONS or kind == "builtin" or not rest:
            raise SpecError(f"unknown judge spec {spec!r}: use {SPEC_FORMS}")
    location, _, query = rest.partition("?")
    options: dict[str, int | str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in _OPTIONS[kind]:
            raise SpecError(f"judge spec {spec!r}: unknown option {key!r} for {kind}")
        try:
            options[key] = _OPTIONS[kind][key](value)
        except ValueError as exc:
            raise SpecError(f"judge spec {spec!r}: option {key!r} wants a number") from exc
    if kind == "openai":
        url = urlsplit(location)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SpecError(f"judge spec {spec!r}: {location!r} is not an http(s) URL")
    return kind, location, options


def parse_spec(spec: str) -> JudgeSpec:
    """Parse a judge spec; `builtin[?threads=N]` is the pointwise builtin judge
    (judge/pointwise.py) on the embedded base model."""
    kind, location, options = check_spec_form(spec)
    if kind == "builtin":
        from judge.pointwise import BUILTIN_HEAD

        return JudgeSpec(kind, BUILTIN_HEAD, options)
    if kind == "openai":
        return JudgeSpec(kind, location, options)
    path = Path(location).expanduser()
    if kind == "gguf" and not path.is_file():
        raise SpecError(f"judge spec {spec!r}: no GGUF file at {path}")
    if kind == "hf" and not (path / "config.json").is_file():
        raise SpecError(f"judge spec {spec!r}: {path} is not a transformers model directory")
    return JudgeSpec(kind, path, options)


def load_backend(spec: JudgeSpec | str) -> JudgeBackend:
    """Load the model a spec names; nothing is downloaded."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    try:
        if spec.kind == "builtin":
            from judge.pointwise import load_builtin

            return load_builtin(spec.path, n_threads=int(spec.options.get("threads", 0)) or None)
        if spec.kind == "gguf":
            from judge.backends.llamacpp import LlamaCppBackend

            return LlamaCppBackend(
                spec.path,
                n_threads=int(spec.options.get("threads", 0)) or None,
                n_ctx=int(spec.options.get("ctx", 4096)),
            )
        if spec.kind == "openai":
            from judge.backends.openai import OpenAICompletionsBackend

            return OpenAICompletionsBackend(
                str(spec.path),
                model=str(spec.options["model"]) if spec.options.get("model") else None,
                concurrency=int(spec.options.get("concurrency", 4)),
                scoring=str(spec.options.get("scoring", "auto")),
                logprobs=int(spec.options.get("logprobs", 20)),
                timeout=float(spec.options.get("timeout", 600)),
            )
        from judge.backends.hf import TransformersBackend

        quant = spec.options.get("quant")
        return TransformersBackend(
            spec.path,
            quant=str(quant) if quant else None,
            dtype=str(spec.options.get("dtype", "fp32")),
            batch_size=int(spec.options.get("batch", 8)),
        )
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelNotFoundError):
            raise
        raise SpecError(f"{spec.path}: cannot load a {spec.kind} judge ({exc})") from exc
