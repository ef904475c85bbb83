"""Files written whole or not at all, and read within a bound.

A file or folder is built under a temporary name beside its destination (`.NAME.PID-RANDOM.part`,
unique to the process) and renamed into place at the end, so readers never see half of it and
two processes never write the same temporary file. What a killed process left behind is removed
by the next write to the same destination, once that process is gone.
"""

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import EntropixError

TEXT_LIMIT = 16 * 2**20  # bytes of a settings, prompts or stdin file; far above any real one


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner(leftover: Path, dest: Path) -> int:
    """The process id in a temporary name of `dest` (0 if the name is not one of ours)."""
    middle = leftover.name[len(dest.name) + 2 : -len(".part")]
    pid = middle.split("-", 1)[0]
    return int(pid) if pid.isdigit() else 0


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(dest: Path):
    """Remove the temporary files and folders of `dest` whose writing process no longer runs."""
    for leftover in dest.parent.glob(f".{dest.name}.*.part"):
        pid = _owner(leftover, dest)
        if pid and not _running(pid):
            _remove(leftover)


@contextmanager
def temporary(dest: Path, folder: bool = False) -> Iterator[Path]:
    """A new empty file (or folder) beside `dest`, unique to this process; removed at the end."""
    dest = Path(dest)
    remove_leftovers(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    # mkdir / touch (not tempfile's) so the result gets the usual permissions under the umask.
    tmp.mkdir() if folder else tmp.touch(exist_ok=False)
    try:
        yield tmp
    finally:
        _remove(tmp)


@contextmanager
def replacing(dest: Path, folder: bool = False) -> Iterator[Path]:
    """A temporary path to write; it becomes `dest` only if the block ends without an error.

    A file replaces an existing `dest`; a folder replaces only a missing or empty folder.
    """
    with temporary(dest, folder) as tmp:
        yield tmp
        os.replace(tmp, dest)


def write_text(dest: Path, text: str):
    """Write `text` (UTF-8) to `dest` atomically."""
    with replacing(Path(dest)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_limited(stream: BinaryIO, what: str, limit: int = TEXT_LIMIT) -> bytes:
    """All of `stream`, refused past `limit` bytes: an endless file (/dev/zero) must not hang
    or exhaust the reader."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise EntropixError(f"{what} is over {limit // 2**20} MB; is it the right file?")
    return data
