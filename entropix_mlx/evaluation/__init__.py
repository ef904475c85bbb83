"""Paired evaluation of the samplers on arithmetic, GSM8K and ARC (`entropix-mlx eval`)."""

from ..errors import EvalError
from .answers import extract_answer, same_number
from .arms import ARMS, CONTROL_TEMPERATURE, Arm, make_arms
from .report import (
    ITEMS_FILE,
    SCHEMA,
    SUMMARY_FILE,
    RecordWriter,
    format_table,
    summarize,
    write_summary,
)
from .runner import EvalRun, item_seed, run_eval
from .settings import parse_seeds, plan
from .stats import mcnemar_exact, paired_counts, wilson_interval
from .tasks import TASKS, Item, Task, arith_items, load_task

__all__ = [
    "ARMS",
    "CONTROL_TEMPERATURE",
    "ITEMS_FILE",
    "SCHEMA",
    "SUMMARY_FILE",
    "TASKS",
    "Arm",
    "EvalError",
    "EvalRun",
    "Item",
    "RecordWriter",
    "Task",
    "arith_items",
    "extract_answer",
    "format_table",
    "item_seed",
    "load_task",
    "make_arms",
    "mcnemar_exact",
    "paired_counts",
    "parse_seeds",
    "plan",
    "run_eval",
    "same_number",
    "summarize",
    "wilson_interval",
    "write_summary",
]
