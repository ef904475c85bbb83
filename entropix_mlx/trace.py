"""Per-token trace records: one flat JSON object per generated token, one per line (JSONL).

Record fields (stable; documented in docs/traces.md):
  index                 0-based position among the generated tokens
  token                 token id
  text                  the text segment this token added (may be empty)
  logprob               log-probability of the token under the untempered model distribution
  strategy              argmax | pause | branch | resample | adaptive, or null (standard, greedy)
  logits_entropy, logits_varentropy, attn_entropy, attn_varentropy, agreement,
  interaction_strength  the sampler's metrics (bits / bits^2), null when not computed
  temperature, top_p, top_k, min_p
                        the sampling parameters used for this token, null when not applicable
  finish_reason         null, or "stop" / "length" on the last token
  fork                  null, or on the first token committed after a look-ahead fork
                        (branch_k > 0): {at, rule, winner,
                        candidates: [{token, logprob, score, scored_tokens, text}]}
                        (optional when reading: older traces lack it)
"""

import contextlib
import json
import math
import numbers
from pathlib import Path
from typing import List, Optional, Union

from .errors import EntropixError
from .generate import GenerationResponse
from .jsonl import read_records
from .sampling import METRICS, PARAMETERS, STRATEGIES

FIELDS = (
    "index",
    "token",
    "text",
    "logprob",
    "strategy",
    *METRICS,
    *PARAMETERS,
    "finish_reason",
    "fork",
)
OPTIONAL_FIELDS = ("fork",)  # traces written before look-ahead branching lack it


def trace_record(index: int, step, text: str, finish_reason: Optional[str]) -> dict:
    """The record of one generated token: `step` is a TokenStep or GenerationResponse (token,
    logprob, strategy, metrics, params); `text` the text it added."""
    record = {
        "index": index,
        "token": step.token,
        "text": text,
        "logprob": step.logprob,
        "strategy": step.strategy,
    }
    record.update({k: step.metrics.get(k) for k in METRICS})
    record.update({k: step.params.get(k) for k in PARAMETERS})
    if record["top_k"] is not None:
        record["top_k"] = int(record["top_k"])
    record["finish_reason"] = finish_reason
    record["fork"] = getattr(step, "fork", None)
    return record


class TraceWriter:
    """Writes one record per response to `path`, a line each, flushed as written.

    The file is created (an existing one replaced) only at the first record, so a run that
    fails before its first token leaves `path` as it was; one killed midway keeps every
    record written so far. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.stream = None
        self.count = 0

    def write(self, response: GenerationResponse):
        record = trace_record(self.count, response, response.text, response.finish_reason)
        try:
            if self.stream is None:
                self.stream = open(self.path, "w", encoding="utf-8")
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        except OSError as e:  # a full disk, a file that cannot be written
            self.abandon()
            raise EntropixError(
                f"cannot write the trace {self.path} ({e.strerror or e}); "
                f"{self.count} records were written"
            ) from None
        self.count += 1

    def close(self):
        if self.stream is not None:
            self.stream.close()

    def abandon(self):
        """Close after a failed write, dropping what could not be written."""
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError):  # its close flushes the unwritten text again
                stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_trace(path: Union[str, Path]) -> List[dict]:
    """The records of a trace file, checked to carry every field with a value of its type."""
    required = [name for name in FIELDS if name not in OPTIONAL_FIELDS]
    return read_records(path, required, "a trace record", check=record_problem)


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a whole number too large for a float
        return False


def record_problem(record: dict) -> Optional[str]:
    """What is wrong with the values of a trace record (None if nothing)."""
    for name in ("index", "token"):
        if isinstance(record[name], bool) or not isinstance(record[name], int):
            return f"{name} must be an integer, got {record[name]!r}"
    if not isinstance(record["text"], str):
        return f"text must be a string, got {record['text']!r}"
    if record["strategy"] is not None and record["strategy"] not in STRATEGIES:
        choices = ", ".join(STRATEGIES)
        return f"strategy must be one of {choices} or null, got {record['strategy']!r}"
    logprob = record["logprob"]
    if logprob is not None and (isinstance(logprob, bool) or not isinstance(logprob, numbers.Real)):
        return f"logprob must be a number or null, got {logprob!r:.40}"
    for name in (*METRICS, *PARAMETERS):  # what plot draws: finite, or it has no axis to draw on
        value = record[name]
        if value is not None and not _finite_number(value):
            return f"{name} must be a finite number or null, got {value!r:.40}"
    if record["finish_reason"] not in (None, "stop", "length"):
        reason = record["finish_reason"]
        return f'finish_reason must be "stop", "length" or null, got {reason!r}'
    return None
