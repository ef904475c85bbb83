"""Per-token trace records: one flat JSON object per generated token, one per line (JSONL).

Record fields (stable; documented in README.md, "Trace format"):
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
  fork                  null, or on the first token committed after a look-ahead fork (branch_k > 0):
                        {at, rule, winner, candidates: [{token, logprob, score, scored_tokens, text}]}
                        (optional when reading: older traces lack it)
"""

import json
from pathlib import Path
from typing import IO, List, Union

from .generate import METRICS, PARAMETERS, GenerationResponse
from .jsonl import read_records

FIELDS = ("index", "token", "text", "logprob", "strategy", *METRICS, *PARAMETERS, "finish_reason", "fork")
OPTIONAL_FIELDS = ("fork",)  # traces written before look-ahead branching lack it


def trace_record(index: int, response: GenerationResponse) -> dict:
    record = {
        "index": index,
        "token": response.token,
        "text": response.text,
        "logprob": response.logprob,
        "strategy": response.strategy,
    }
    record.update({k: response.metrics.get(k) for k in METRICS})
    record.update({k: response.params.get(k) for k in PARAMETERS})
    if record["top_k"] is not None:
        record["top_k"] = int(record["top_k"])
    record["finish_reason"] = response.finish_reason
    record["fork"] = response.fork
    return record


class TraceWriter:
    """Writes one record per response to an open text stream."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.count = 0

    def write(self, response: GenerationResponse):
        self.stream.write(json.dumps(trace_record(self.count, response), ensure_ascii=False) + "\n")
        self.count += 1


def read_trace(path: Union[str, Path]) -> List[dict]:
    """The records of a trace file, checked to carry every field."""
    required = [name for name in FIELDS if name not in OPTIONAL_FIELDS]
    return read_records(path, required, "a trace record")
