"""The errors this package raises for bad input: one hierarchy, each message one line fit for the
user (what is wrong and what to do). The CLI turns any of them into `Error: ...` and exit code 1;
anything else is a bug and keeps its traceback."""

from typing import Optional


class EntropixError(ValueError):
    """Bad input or a failed run that the user can fix. `param` names the argument at fault
    (for example "prompt", "seed", "sampler", "config") where one is: the server reports it."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


class ConfigError(EntropixError):
    """Invalid sampler settings (a SamplerConfig field, a preset or config file, a pause token)."""


class CalibrationError(EntropixError):
    """Bad calibration input (prompts, target mix) or too little data to fit."""


class ModelLoadError(EntropixError):
    """A model could not be found, fetched, read or built."""


class GenerationError(EntropixError):
    """Bad generation input (prompt, seed, batch)."""


class ContextLengthError(GenerationError):
    """A prompt that does not fit the model's context window."""


class ShardingError(EntropixError):
    """The model cannot be split across this many ranks."""


class EvalError(EntropixError):
    """Bad evaluation input (task, data file, seeds, arms)."""


class BenchError(EntropixError):
    """Bad benchmark input or a failed benchmark run."""


class PlotError(EntropixError):
    """A trace that cannot be drawn."""
