"""The machine a benchmark ran on: OS, CPU or chip, library versions, MLX's device, load."""

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import mlx.core as mx

from .. import cpu_blas


def cpu_name() -> str:
    """The CPU or chip as the OS names it ("Apple M2 Pro", "Intel(R) Xeon(R) ...")."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.lower().startswith(("model name", "hardware")):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def package_version(name: str):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_average():
    """1-minute load average, or None where the OS has none (other work skews timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    return {
        "os": platform.system(),
        "os_release": platform.release(),
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "mlx_lm": package_version("mlx-lm"),
        "entropix_mlx": package_version("entropix-mlx"),
        "device": str(mx.default_device()),
        "cpu_blas": cpu_blas.STATUS.detail,
        "load_average_start": load_average(),
    }
