"""One row's text as its tokens come: the streaming detokenizer, the stop strings, and why the
row ended. Every front (single stream, batch stream, server, evaluation) reads text through
`RowText`."""

from typing import Optional, Sequence, Tuple

# Why a row ended, and the OpenAI finish reason each one is reported as.
EOS, STOP_STRING, MAX_TOKENS = "eos", "stop_string", "max_tokens"
FINISH_REASONS = {EOS: "stop", STOP_STRING: "stop", MAX_TOKENS: "length"}
# Prompt tokens that prime a continuation's detokenizer: one gives the first token its context,
# a few more let a character split over byte tokens start within them.
PRIMING_TOKENS = 4


def row_end(token: int, eos_ids, generated: int, max_tokens: int) -> Optional[str]:
    """EOS at an end-of-sequence token, MAX_TOKENS at the row's last allowed token, else None."""
    if token in eos_ids:
        return EOS
    return MAX_TOKENS if generated >= max_tokens else None


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> Tuple[str, bool]:
        """The text that is safe to emit now, and whether a stop string was reached."""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[: min(found)], ""
            return out, True
        keep = self._partial_stop_length()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _partial_stop_length(self) -> int:
        longest = max((len(s) for s in self.stops), default=1)
        for k in range(min(len(self.pending), longest - 1), 0, -1):
            if any(s.startswith(self.pending[-k:]) for s in self.stops):
                return k
        return 0


class RowText:
    """The text of one row: `add` each generated token with the engine's end (EOS, MAX_TOKENS
    or None) and get the new text, cut before a stop string, and why the row ended (None while
    it goes on; STOP_STRING once a stop string is reached, though the engine's row still runs).

    `context`: the prompt tokens the text continues (a completion), whose last few prime the
    detokenizer, so that the text is exactly what the tokens decode to after the prompt (its
    first token keeps its leading space); none for a text of its own (a chat answer), whose
    leading space the detokenizer drops as at the start of any text."""

    def __init__(self, tokenizer, stops: Sequence[str] = (), context: Sequence[int] = ()):
        self.detokenizer = tokenizer.detokenizer
        self.stops = StopMatcher(stops)
        self.end: Optional[str] = None
        self.offset = 0  # characters of the detokenizer's text already handed out (or primed)
        primer = [int(t) for t in context[-PRIMING_TOKENS:]]
        if primer:
            alone = tokenizer.detokenizer  # the primer's whole text, nothing held back
            for token in primer:
                self.detokenizer.add_token(token)
                alone.add_token(token)
            alone.finalize()
            self.offset = len(alone.text)

    def add(self, token: int, end: Optional[str]) -> Tuple[str, Optional[str]]:
        if end != EOS:  # the end-of-sequence token is not text
            self.detokenizer.add_token(token)
        if end:
            self.detokenizer.finalize()
        text, stopped = self.stops.feed(self._new_text())
        if stopped:
            self.end = STOP_STRING
        elif end:
            text += self.stops.flush()
            self.end = end
        return text, self.end

    def _new_text(self) -> str:
        text = self.detokenizer.text
        new = text[self.offset :]
        self.offset = max(self.offset, len(text))
        return new

    @property
    def finish_reason(self) -> Optional[str]:
        """The OpenAI finish reason: "stop", "length", or None while the row goes on."""
        return FINISH_REASONS.get(self.end)
