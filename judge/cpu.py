"""Which x86 CPU extensions the installed llama.cpp build needs (install.sh checks a host has them).

llama.cpp compiles its CPU kernels for a fixed set of extensions: all of the build machine's
with `GGML_NATIVE=ON`, a stated baseline with `GGML_NATIVE=OFF` (the Makefile's default,
x86-64-v3: AVX, AVX2, FMA, F16C, BMI2). A CPU without one of them dies with SIGILL at the first
kernel, so bundles record the set (agent/bundle.py) and install.sh checks a site's CPU first.
"""

from __future__ import annotations

import re

SYSTEM_INFO_FLAGS = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX_VNNI": "avx_vnni",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}
"""llama.cpp's system-info names of x86 extensions -> their /proc/cpuinfo flags."""

X86_64_V2 = {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
X86_64_V3 = X86_64_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
X86_64_V4 = X86_64_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
LEVELS = (("x86-64-v2", X86_64_V2), ("x86-64-v3", X86_64_V3), ("x86-64-v4", X86_64_V4))


def system_info() -> str:
    """llama.cpp's one-line build summary (`CPU : SSE3 = 1 | AVX2 = 1 | ...`)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode().strip()


def compiled_features(info: str) -> list[str]:
    """The extensions a system-info line reports as compiled in (`NAME = 1`), in its order."""
    return re.findall(r"\b([A-Z0-9_]+) = 1\b", info)


def required_flags(info: str) -> list[str]:
    """The /proc/cpuinfo flags the build's kernels need (only x86 extensions are known)."""
    return [SYSTEM_INFO_FLAGS[f] for f in compiled_features(info) if f in SYSTEM_INFO_FLAGS]


def baseline_name(flags: list[str]) -> str:
    """The lowest x86-64 micro-architecture level that has every flag, else `native`."""
    if not flags:
        return "none"
    for name, level in LEVELS:
        if set(flags) <= level:
            return name
    return "native"
