"""A bound on the model's chat template: it is code from the model file (Jinja, run by
transformers in its sandbox), so a template that loops without end is stopped, and one that
fails says so in one line rather than with a traceback."""

import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import GenerationError

TEMPLATE_SECONDS = 2.0  # a chat template renders in milliseconds
TEMPLATE_CODE = "<template>"  # the file name of the Python code Jinja compiles a template to


class _OutOfTime(Exception):
    pass


@contextmanager
def bounded_template(seconds: Optional[float] = None) -> Iterator[None]:
    """Render a chat template inside this block: its code is stopped once it has run for
    `seconds` (default TEMPLATE_SECONDS), and what it raises (or a template that does not
    parse) becomes a GenerationError (param "messages"). Only the template's frames are traced."""
    seconds = TEMPLATE_SECONDS if seconds is None else seconds
    started = []  # when the template's code first ran

    def in_template(frame, event, arg):
        if not started:
            started.append(time.monotonic())
        elif time.monotonic() - started[0] > seconds:
            raise _OutOfTime
        return in_template

    def on_call(frame, event, arg):
        return in_template if frame.f_code.co_filename == TEMPLATE_CODE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    except _OutOfTime:
        raise GenerationError(
            f"the model's chat template ran for over {seconds:g} s and was stopped (it loops "
            "without end); fix the template, or send the prompt as plain text without it",
            "messages",
        ) from None
    except Exception as e:
        if not _from_template(e):
            raise
        reason = str(e).splitlines()[0] if str(e) else ""
        reason = reason if _is_jinja(e) else f"{type(e).__name__}: {reason}".rstrip(": ")
        raise GenerationError(
            f"the model's chat template failed ({reason}); change the messages to what the "
            "template accepts, fix the template, or send the prompt as plain text without it",
            "messages",
        ) from None
    finally:
        sys.settrace(previous)


def _is_jinja(error: Exception) -> bool:
    return type(error).__module__.startswith("jinja2")


def _from_template(error: Exception) -> bool:
    """A Jinja error (a template that does not parse, `raise_exception`, an undefined name), or
    any exception raised while the template's own code ran."""
    if _is_jinja(error):
        return True
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == TEMPLATE_CODE:
            return True
        tb = tb.tb_next
    return False
