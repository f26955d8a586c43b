"""The portable llama.cpp build (issue 14): what it needs of a CPU, that it holds no AVX-512,
that it judges under an emulated AVX2-only CPU, and that the Makefile keeps one build per set
of CMake flags.

The emulation is Debian's `qemu-user` (`qemu-x86_64 -cpu Haswell`; .ci/run installs it): the
test fails without it in CI (CI=true) and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp
import pytest

from judge.cpu import (
    baseline_name,
    compiled_features,
    required_flags,
    system_info,
)
from tests.needs import needs_tool

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="x86-64 builds and CPU extensions only"
)
NATIVE_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | "
    "REPACK = 1 | "
)
"""llama.cpp's system info for a native build on an AVX-512 (Sapphire Rapids) machine."""


def _portable_build_installed() -> list[str]:
    """The installed build's required CPU flags; a native opt-in build is skipped (not in CI)."""
    flags = required_flags(system_info())
    if baseline_name(flags) != "x86-64-v3" and os.environ.get("CI", "").lower() != "true":
        pytest.skip(f"a {baseline_name(flags)} llama.cpp build is installed (LLAMA_CPU=native)")
    return flags


def test_system_info_maps_to_cpuinfo_flags_and_a_baseline() -> None:
    assert compiled_features(NATIVE_INFO)[:3] == ["SSE3", "SSSE3", "AVX"]
    native = required_flags(NATIVE_INFO)
    assert native[-4:] == ["avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16"]
    assert "LLAMAFILE" in compiled_features(NATIVE_INFO) and "llamafile" not in native
    assert baseline_name(native) == "native"
    assert baseline_name(native[:-3]) == "x86-64-v4"
    assert baseline_name(native[:-4]) == "x86-64-v3"
    assert baseline_name(["pni", "ssse3"]) == "x86-64-v2"
    assert baseline_name([]) == "none"


def test_the_installed_build_is_x86_64_v3_without_avx512_instructions() -> None:
    """No zmm register in any ggml library: what lets it run on AVX2-only CPUs."""
    flags = _portable_build_installed()
    assert flags == ["pni", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2"]
    objdump = needs_tool("objdump", "binutils")
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml*.so"))
    assert any(lib.name == "libggml-cpu.so" for lib in libs), libs
    for lib in libs:
        listing = subprocess.run(
            [objdump, "-d", "--no-show-raw-insn", str(lib)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "vfmadd" in listing.stdout or lib.name != "libggml-cpu.so"  # AVX2/FMA kernels
        zmm = [line for line in listing.stdout.splitlines() if "%zmm" in line]
        assert not zmm, f"{lib}: {len(zmm)} AVX-512 instructions, e.g. {zmm[0].strip()}"


HASWELL = ["-cpu", "Haswell"]


def test_the_emulated_haswell_refuses_avx512(tmp_path: Path) -> None:
    """The emulation is strict: an AVX-512 instruction dies with SIGILL under it."""
    qemu = needs_tool("qemu-x86_64", "qemu-user")
    cc = needs_tool("cc", "gcc")
    source = tmp_path / "zmm.c"
    source.write_text('int main(void) { __asm__ volatile("vpxord %zmm0, %zmm0, %zmm0"); }\n')
    subprocess.run([cc, "-o", str(tmp_path / "zmm"), str(source)], check=True)
    result = subprocess.run([qemu, *HASWELL, str(tmp_path / "zmm")], capture_output=True)
    assert result.returncode == -signal.SIGILL


@pytest.mark.slow
def test_judge_compare_runs_on_an_emulated_avx2_only_cpu(tiny_gguf: Path, tmp_path: Path) -> None:
    """`pandalm-judge compare` in score mode on two pairs (both orders), the whole Python
    process under `qemu-x86_64 -cpu Haswell` (AVX2, FMA, F16C, BMI2; no AVX-512)."""
    _portable_build_installed()
    qemu = needs_tool("qemu-x86_64", "qemu-user")
    pairs, out = tmp_path / "pairs.jsonl", tmp_path / "verdicts.jsonl"
    rows = [
        {"instruction": "Add 2 and 3.", "input": "", "response1": "5", "response2": "6"},
        {"instruction": "Capital of France?", "input": "", "response1": "Paris.",
         "response2": "Rome."},
    ]  # fmt: skip
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = [
        qemu, *HASWELL, sys.executable, "-m", "judge", "compare", str(pairs), "-o", str(out),
        "--judge", f"gguf:{tiny_gguf}", "--mode", "score", "--no-cache",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    print(f"compare under qemu -cpu Haswell: {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in records] == [r["instruction"] for r in rows]
    for record in records:
        assert [o["order"] for o in record["orders"]] == ["12", "21"]
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-3, record


def test_the_makefile_builds_each_set_of_flags_into_its_own_folder(tmp_path: Path) -> None:
    """`make -n`: the portable, native and any other CMake flags land in different wheelhouse
    folders, a folder already built is not rebuilt, and pip's wheel cache is never used."""
    needs_tool("make", "make")

    def plan(*assignments: str) -> str:
        result = subprocess.run(
            ["make", "-n", "-C", str(REPO), "setup", f"VENV={tmp_path / 'venv'}",
             f"PANDALM_HOME={tmp_path / 'home'}", *assignments],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    def build_dir(text: str) -> Path:
        found = re.findall(r"pip wheel --no-cache-dir --no-deps -w (\S+) llama-cpp-python", text)
        assert len(found) == 1, text
        return Path(found[0])

    portable = plan()
    assert "CMAKE_ARGS='-DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON" in (
        portable
    )
    folders = [
        build_dir(portable),
        build_dir(plan("LLAMA_CPU=native")),
        build_dir(plan("LLAMA_CMAKE_ARGS=-DGGML_NATIVE=OFF -DGGML_AVX2=ON")),
    ]
    assert folders[0].name.startswith("x86-64-v3-") and folders[1].name.startswith("native-")
    assert len(set(folders)) == 3
    assert all(f.parent == tmp_path / "home" / "wheelhouse" / "llama-cpp" for f in folders)
    assert "-DGGML_NATIVE=ON" in plan("LLAMA_CPU=native")

    folders[1].mkdir(parents=True)  # the native build is done: only the portable one builds
    (folders[1] / "CMAKE_ARGS").write_text("-DGGML_NATIVE=ON\n")
    assert "CMAKE_ARGS=" not in plan("LLAMA_CPU=native")
    assert build_dir(plan()) == folders[0]

    bad = subprocess.run(
        ["make", "-n", "-C", str(REPO), "setup", "LLAMA_CPU=v4"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "LLAMA_CPU=v4: use x86-64-v3" in bad.stderr
