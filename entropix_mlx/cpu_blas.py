"""The system's OpenBLAS under MLX's CPU backend on Linux, loaded before MLX is first imported.

MLX's Linux wheel links netlib's reference BLAS (float32 matmul at a few GFLOP/s). A library
loaded with `RTLD_GLOBAL` before `mlx.core` comes first in symbol lookup, so MLX's BLAS and
LAPACK calls resolve to it; loaded after, it changes nothing. So this module runs first in
`entropix_mlx/__init__.py` and imports nothing that imports mlx.

`ENTROPIX_MLX_OPENBLAS=0` turns it off; a path there picks the library to load.

OpenBLAS picks its kernels by CPU model, and a virtual CPU that hides its model gets the
generic ones (`Prescott`, 5-10x slower here). Unless `OPENBLAS_CORETYPE` is set, it is set
from the CPU's instruction-set flags (x86-64 only), as OpenBLAS itself maps known models.
"""

import ctypes
import ctypes.util
import glob
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Optional

SWITCH = "ENTROPIX_MLX_OPENBLAS"
OFF_VALUES = ("0", "off", "false", "no")
INSTALL_HINT = "apt-get install libopenblas0-pthread (Debian/Ubuntu; Fedora: openblas-threads)"
# The pthread builds first: an OpenMP build can clash with another OpenMP runtime in the process.
KNOWN_PATHS = (
    "/usr/lib/*/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib/*/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
CORETYPE = "OPENBLAS_CORETYPE"
CORE_BY_FLAGS = (  # the first whose flags the CPU has
    ({"avx512_bf16", "avx512bw", "avx512vl"}, "Cooperlake"),
    ({"avx512f", "avx512bw", "avx512vl"}, "SkylakeX"),
    ({"avx2", "fma"}, "Haswell"),
)


@dataclass(frozen=True)
class BlasStatus:
    """Whether MLX's BLAS calls go to the system's OpenBLAS in this process, and why (not)."""

    active: bool
    library: Optional[str]  # the OpenBLAS file found (loaded when active)
    detail: str  # one line for people: the build loaded, or why none was

    def describe(self) -> str:
        return f"CPU BLAS: {self.detail}"


def candidates():
    """OpenBLAS files to try, best first: the known paths, then what `ctypes.util` finds."""
    for pattern in KNOWN_PATHS:
        yield from sorted(glob.glob(pattern))
    for name in ("openblasp", "openblas"):
        found = ctypes.util.find_library(name)
        if found:
            yield found


def open_openblas(path: str, mode: int = ctypes.RTLD_LOCAL) -> Optional[ctypes.CDLL]:
    """The library at `path` if it loads here and is OpenBLAS (it has `openblas_get_config`)."""
    try:
        lib = ctypes.CDLL(path, mode=mode)
        lib.openblas_get_config.restype = ctypes.c_char_p
    except (OSError, AttributeError):  # another architecture, a broken link, not OpenBLAS
        return None
    return lib


def find_openblas(requested: Optional[str] = None) -> Optional[str]:
    """The first candidate that loads (`requested`, a path, alone if given); None if none does."""
    for path in [requested] if requested else candidates():
        if open_openblas(path) is not None:
            return path
    return None


def core_from_flags(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The OpenBLAS core type for this x86-64 CPU's flags, or None (unknown, or not x86-64)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return None
    flags = set(line.partition(":")[2].split())
    return next((core for needed, core in CORE_BY_FLAGS if needed <= flags), None)


def _mlx_already_on_cpu() -> bool:
    """mlx.core was imported first and runs on the CPU (where BLAS speed matters)."""
    core = sys.modules.get("mlx.core")
    return core is not None and core.default_device() == core.cpu


def _too_late(path: Optional[str]) -> BlasStatus:
    """mlx.core is loaded already: OpenBLAS would change nothing now (warn if it mattered)."""
    why = "mlx was imported before entropix_mlx, so MLX's BLAS calls are already bound"
    if path is not None and _mlx_already_on_cpu():
        warnings.warn(
            f"entropix_mlx could not apply the system OpenBLAS ({path}): {why}. Import "
            f"entropix_mlx before mlx for fast float32 matmuls on the CPU (or set {SWITCH}=0 "
            "to silence this).",
            RuntimeWarning,
            stacklevel=2,
        )
    return BlasStatus(False, path, f"MLX's bundled reference BLAS ({why})")


def _bundled(why: str) -> BlasStatus:
    return BlasStatus(False, None, f"MLX's bundled reference BLAS ({why})")


def apply() -> BlasStatus:
    """Load the system OpenBLAS globally if it can still take effect; say what happened."""
    if not sys.platform.startswith("linux"):
        detail = f"MLX's own (OpenBLAS is loaded on Linux, not {sys.platform})"
        return BlasStatus(False, None, detail)
    setting = os.environ.get(SWITCH, "").strip()
    if setting.lower() in OFF_VALUES:
        return _bundled(f"{SWITCH}={setting} turns OpenBLAS off")
    if "mlx.core" in sys.modules:
        return _too_late(setting or next(candidates(), None))
    core = None if os.environ.get(CORETYPE) else core_from_flags()
    if core:  # OpenBLAS reads it once, when it is first loaded (by find_openblas)
        os.environ[CORETYPE] = core
    path = find_openblas(setting or None)
    if path is None:
        return _bundled(
            f"{SWITCH}={setting} is not an OpenBLAS library"
            if setting
            else f"no system OpenBLAS; {INSTALL_HINT}"
        )
    lib = open_openblas(path, ctypes.RTLD_GLOBAL)
    config = lib.openblas_get_config().decode(errors="replace").strip()
    return BlasStatus(True, path, f"{config} ({path}), loaded before MLX")


STATUS = apply()
