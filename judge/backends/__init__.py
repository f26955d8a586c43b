"""Judge specs (`builtin`, `gguf:PATH`, `hf:PATH?quant=8bit|4bit&dtype=bf16`,
`openai:URL?model=NAME`, `rule:NAME?band=X`, `reward:PATH|URL?band=X`), the registry of
backend kinds, and loading.

Each backend kind is registered once in `BACKENDS`: its options and their types, what its spec's
location names (nothing, a local file, a model directory or a URL), whether it is pointwise and
the function that loads it, imported only when a judge of that kind is loaded (importing this
package pulls in neither llama_cpp nor torch). Spec parsing, `judge/cli.py` and the offline
bundle (`agent/bundle.py`) read the registry; a new backend is one module with a
`from_spec(spec)` function plus one `register(BackendKind(...))`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from judge.backends.base import GenerationSettings, JudgeBackend
from judge.models import ModelNotFoundError

__all__ = [
    "BACKENDS",
    "BackendKind",
    "GenerationSettings",
    "JudgeBackend",
    "JudgeSpec",
    "Location",
    "SpecError",
    "check_spec_form",
    "load_backend",
    "parse_spec",
    "register",
    "spec_forms",
]


class SpecError(ValueError):
    """A judge spec string that names no usable judge."""


class Location(Enum):
    """What the part after `KIND:` names."""

    NONE = "none"
    """Nothing: the spec is `KIND[?options]` and the model ships with the package."""
    FILE = "file"
    """A local model file, e.g. a GGUF."""
    MODEL_DIR = "model directory"
    """A local transformers model directory (one with a config.json)."""
    URL = "url"
    """An http(s) server's URL: no model on this machine."""
    NAME = "name"
    """One of the kind's `names` (a rule): nothing on disk."""


Carried = list[tuple[Path, str]]
"""(source file or folder, destination relative to an offline bundle's models/)."""


@dataclass(frozen=True)
class BackendKind:
    """One kind of judge backend, registered once in `BACKENDS`."""

    name: str
    location: Location
    loader: str | Callable[[JudgeSpec], JudgeBackend]
    """`module:function` (imported on first load, so heavy libraries stay unloaded until then)
    or the function itself; it builds the backend from a parsed spec."""
    form: str
    """How the spec is written, for error messages: `gguf:PATH`."""
    options: Mapping[str, type[int] | type[float] | type[str]] = field(default_factory=dict)
    pointwise: bool = False
    """Scores each response on its own (judge/pointwise.py): a pair costs no forward pass once
    both responses are scored; gives verdict probabilities only, never generated text."""
    beam_search: bool = False
    """Can decode with PandaLM's reference settings (beam search)."""
    file_label: str = "model"
    """For a FILE location: what the missing file is called in `no GGUF file at PATH`."""
    packaged: str | None = None
    """For a NONE location: the packaged model path, as `module:attribute`."""
    names: tuple[str, ...] = ()
    """For a NAME location: the names a spec may give."""
    served: bool = False
    """An http(s) URL in place of `location` names a server of such models (`reward:PATH` or
    `reward:http://HOST:8000`): the spec's location is then Location.URL, with its rules."""

    def load(self, spec: JudgeSpec) -> JudgeBackend:
        return _resolve(self.loader)(spec)

    def where(self, location: str) -> Location:
        """What a spec's `location` names: `self.location`, or a URL for a served kind."""
        if self.served and urlsplit(location).scheme in ("http", "https"):
            return Location.URL
        return self.location

    def carry(self, spec: JudgeSpec, models: str) -> tuple[Carried, str]:
        """What an offline bundle copies for this judge and the spec naming the copy, with
        `models` standing for the site's models folder."""
        location = self.where(str(spec.path))
        if location in (Location.NONE, Location.URL, Location.NAME):
            return [], spec.text()  # packaged, a server on the site's network, a rule
        path = Path(spec.path)
        name = path.name if location is Location.FILE else path.resolve().name
        return [(path, f"judge/{name}")], spec.text(f"{models}/judge/{name}")


BACKENDS: dict[str, BackendKind] = {}
"""Every backend kind by name, in the order of `spec_forms()`."""


def register(kind: BackendKind) -> BackendKind:
    """Add a backend kind (a test or a plugin may register its own)."""
    if kind.location is Location.NONE and kind.packaged is None:
        raise ValueError(f"backend {kind.name!r}: a kind without a location needs `packaged`")
    BACKENDS[kind.name] = kind
    return kind


def _resolve(ref: str | Callable):
    if callable(ref):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def spec_forms() -> str:
    """`builtin, gguf:PATH, ... or openai:URL[?model=NAME]`: every registered form."""
    forms = [kind.form for kind in BACKENDS.values()]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else "".join(forms)


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed judge spec: backend kind, model path (the server's URL for `openai`) and
    options."""

    kind: str
    path: Path | str
    options: dict[str, int | float | str] = field(default_factory=dict)

    @property
    def backend(self) -> BackendKind:
        return BACKENDS[self.kind]

    @property
    def pointwise(self) -> bool:
        """Whether the judge scores each response on its own (judge/pointwise.py), so a pair
        costs no forward pass once both responses are scored."""
        return self.backend.pointwise

    @property
    def served(self) -> bool:
        """Whether the spec names a server (a URL) rather than a model on this machine."""
        return self.backend.where(str(self.path)) is Location.URL

    def text(self, location: str | None = None) -> str:
        """The spec as a string, its location replaced by `location` if given."""
        head = self.kind
        if self.backend.location is not Location.NONE:
            head += f":{self.path if location is None else location}"
        query = urlencode(self.options)
        return f"{head}?{query}" if query else head


def check_spec_form(spec: str) -> tuple[str, str, dict[str, int | float | str]]:
    """A spec's kind, location and options; raises SpecError for a malformed spec, without
    looking for the model (a config file is read before its judge model need be there)."""
    bare = spec.partition("?")[0]
    if bare in BACKENDS and BACKENDS[bare].location is Location.NONE:
        kind, rest = bare, spec
    else:
        kind, sep, rest = spec.partition(":")
        if not sep or kind not in BACKENDS or BACKENDS[kind].location is Location.NONE or not rest:
            raise SpecError(f"unknown judge spec {spec!r}: use {spec_forms()}")
    backend = BACKENDS[kind]
    location, _, query = rest.partition("?")
    options: dict[str, int | float | str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in backend.options:
            raise SpecError(f"judge spec {spec!r}: unknown option {key!r} for {kind}")
        try:
            options[key] = backend.options[key](value)
        except ValueError as exc:
            raise SpecError(f"judge spec {spec!r}: option {key!r} wants a number") from exc
    if backend.location is Location.NAME and location not in backend.names:
        raise SpecError(f"judge spec {spec!r}: {kind} must be one of {', '.join(backend.names)}")
    if backend.where(location) is Location.URL:
        url = urlsplit(location)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SpecError(f"judge spec {spec!r}: {location!r} is not an http(s) URL")
    return kind, location, options


def parse_spec(spec: str) -> JudgeSpec:
    """Parse a judge spec and check that its model is there (nothing is loaded); `builtin` is
    the pointwise CPU judge trained on preference pairs (judge/backends/builtin.py), `rule:`
    a rule (judge/backends/rules.py)."""
    kind, location, options = check_spec_form(spec)
    backend = BACKENDS[kind]
    if backend.location is Location.NONE:
        return JudgeSpec(kind, _resolve(backend.packaged), options)  # type: ignore[arg-type]
    if backend.where(location) in (Location.URL, Location.NAME):
        return JudgeSpec(kind, location, options)
    path = Path(location).expanduser()
    if backend.location is Location.FILE and not path.is_file():
        raise SpecError(f"judge spec {spec!r}: no {backend.file_label} file at {path}")
    if backend.location is Location.MODEL_DIR and not (path / "config.json").is_file():
        raise SpecError(f"judge spec {spec!r}: {path} is not a transformers model directory")
    return JudgeSpec(kind, path, options)


def load_backend(spec: JudgeSpec | str) -> JudgeBackend:
    """Load the model a spec names; nothing is downloaded."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    try:
        return spec.backend.load(spec)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelNotFoundError):
            raise
        raise SpecError(f"{spec.path}: cannot load a {spec.kind} judge ({exc})") from exc


register(
    BackendKind(
        "builtin",
        Location.NONE,
        "judge.backends.builtin:from_spec",
        form="builtin",
        pointwise=True,
        packaged="judge.backends.builtin:BUILTIN_HEAD",
    )
)
register(
    BackendKind(
        "rule",
        Location.NAME,
        "judge.backends.rules:from_spec",
        form="rule:length|length-repetition[?band=X]",
        options={"band": float},
        pointwise=True,
        names=("length", "length-repetition"),
    )
)
register(
    BackendKind(
        "gguf",
        Location.FILE,
        "judge.backends.llamacpp:from_spec",
        form="gguf:PATH",
        options={"threads": int, "ctx": int},
        file_label="GGUF",
    )
)
register(
    BackendKind(
        "hf",
        Location.MODEL_DIR,
        "judge.backends.hf:from_spec",
        form="hf:PATH[?quant=8bit|4bit]",
        options={"quant": str, "dtype": str, "batch": int},
        beam_search=True,
    )
)
register(
    BackendKind(
        "openai",
        Location.URL,
        "judge.backends.openai:from_spec",
        form="openai:URL[?model=NAME]",
        options={"model": str, "concurrency": int, "scoring": str, "logprobs": int, "timeout": int},
    )
)
register(
    BackendKind(
        "reward",
        Location.MODEL_DIR,
        "judge.backends.reward:from_spec",
        form="reward:PATH|URL[?band=X&scale=S]",
        options={
            "band": float,
            "scale": float,
            "dtype": str,
            "batch": int,
            "quant": str,
            "api": str,
            "model": str,
            "concurrency": int,
            "timeout": int,
        },
        pointwise=True,
        served=True,
    )
)
