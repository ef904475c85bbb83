"""The one error type the loaders raise: its message says what is wrong and what to do."""


class ModelLoadError(ValueError):
    """A model could not be loaded; the message is one line, fit for the user."""
