"""Reading JSON Lines files: one JSON object per line, each checked to carry the fields it needs."""

import json
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

from .errors import EntropixError

MAX_LINE = 16 * 2**20  # characters: a record is a few KB


def read_records(
    path: Union[str, Path],
    fields: Sequence[str],
    what: str = "a record",
    limit: Optional[int] = None,
    check: Callable[[dict], Optional[str]] = lambda record: None,
) -> List[dict]:
    """The objects on the non-blank lines of `path` (the first `limit` of them).

    `check` says what is wrong with a record's values (None if nothing). Raises ValueError
    naming the file, the line and what is wrong with it.
    """
    records = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = iter(lambda: f.readline(MAX_LINE + 1), "")  # an endless line must not hang
        for line_no, line in enumerate(lines, start=1):
            if len(line) > MAX_LINE:
                raise EntropixError(f"{path}:{line_no} is over 16 MB, so not {what}")
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                raise EntropixError(f"{path}:{line_no} is not UTF-8 text, so not {what}") from None
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EntropixError(f"{path}:{line_no} is not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise EntropixError(f"{path}:{line_no} is not {what} (not a JSON object)")
            missing = [f for f in fields if f not in record]
            if missing:
                raise EntropixError(
                    f"{path}:{line_no} is not {what} (missing {', '.join(missing)})"
                )
            problem = check(record)
            if problem:
                raise EntropixError(f"{path}:{line_no} is not {what} ({problem})")
            records.append(record)
    return records
