"""The benchmark's one error type."""


class BenchError(ValueError):
    """Bad benchmark input or a failed benchmark run; the message is one line, fit for the user."""
