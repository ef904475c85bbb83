"""The evaluation's one error type."""


class EvalError(ValueError):
    """Bad evaluation input (task, data file, seeds); the message is one line, fit for the user."""
