"""One set of weights for both engines: the model as an MLX folder that `mlx_lm.load` opens."""

import hashlib
import shutil
from pathlib import Path
from typing import Callable

from ..loading import ModelLoadError, resolve
from ..loading.catalog import models_dir
from ..loading.convert import convert


def cache_folder(path: Path) -> Path:
    """Where the MLX copy of the GGUF file `path` is kept: named by file, size and mtime."""
    stat = path.stat()
    fingerprint = hashlib.sha256(
        f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()
    return models_dir() / "mlx-lm" / f"{path.stem}-{fingerprint[:12]}"


def mlx_lm_folder(name: str, log: Callable[[str], None] = lambda msg: None) -> Path:
    """An MLX folder holding exactly the weights `load(name)` reads.

    A folder (or Hub repo) is used as it is; a GGUF file is converted once, without
    re-quantizing (its Q4/Q8 tensors are kept as they are), and reused afterwards.
    """
    path, fmt = resolve(name, log)
    if fmt == "folder":
        return path
    folder = cache_folder(path)
    if (folder / "config.json").is_file():
        return folder
    partial = folder.with_name(folder.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"Converting {path.name} for mlx-lm into {folder}")
    try:
        convert(str(path), partial, bits=None, log=log)
    except OSError as e:
        raise ModelLoadError(
            f"cannot write the mlx-lm copy of {path.name} to {partial}: {e}"
        ) from None
    partial.rename(folder)
    return folder
