"""Numeric answers: extract one from a model's completion and compare it with the gold answer."""

import re
from decimal import Decimal, InvalidOperation
from typing import Optional

# A sign only where it cannot be a binary minus ("5-3" gives 3); thousands commas only in
# groups of three ("3, 4" gives 3 and 4).
NUMBER = r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
STATED_ANSWER = re.compile(rf"answer is\s*:?\s*\$?\s*({NUMBER})", re.IGNORECASE)
HASH_ANSWER = re.compile(rf"####\s*\$?\s*({NUMBER})")
ANY_NUMBER = re.compile(NUMBER)


def extract_answer(text: str) -> Optional[str]:
    """The answer in `text` as a canonical number string, or None when there is none.

    Tried in order: the last "answer is N", the last "#### N", the last number.
    """
    text = text.replace("\u2212", "-")  # the Unicode minus sign
    for pattern in (STATED_ANSWER, HASH_ANSWER):
        found = pattern.findall(text)
        if found:
            return canonical_number(found[-1])
    found = ANY_NUMBER.findall(text)
    return canonical_number(found[-1]) if found else None


def canonical_number(text: str) -> str:
    """'1,234.50' -> '1234.5', '-0007' -> '-7': one spelling per value."""
    value = Decimal(text.replace(",", ""))
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def same_number(answer: Optional[str], gold: str) -> bool:
    """Whether an extracted answer equals the gold answer as a number."""
    if answer is None:
        return False
    try:
        return Decimal(answer.replace(",", "")) == Decimal(gold.replace(",", ""))
    except InvalidOperation:
        return False
