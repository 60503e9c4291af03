"""Answer verifiers for user tasks: `exact`, `numeric`, and `math` (math-verify, for \\boxed{} answers)."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable, Optional

from ...errors import require
from .base import ANSWER_MARK

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{")


def _after_marker(text: str) -> str:
    for mark in (ANSWER_MARK, "Answer:", "answer:", "####"):
        i = text.rfind(mark)
        if i >= 0:
            return text[i + len(mark):]
    return text


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...}, with nested braces."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def extract_exact(text: str) -> Optional[str]:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tail = _after_marker(text).strip()
    return tail.split("\n", 1)[0].strip() or None


def extract_numeric(text: str) -> Optional[str]:
    boxed = last_boxed(text)
    found = _NUMBER.findall(boxed if boxed is not None else _after_marker(text))
    return found[-1].replace(",", "") if found else None


def _as_number(s: str) -> Optional[Fraction]:
    try:
        return Fraction(s.replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def verify_exact(text: str, reference: str) -> bool:
    got = extract_exact(text)
    return got is not None and " ".join(got.split()) == " ".join(reference.split())


def verify_numeric(text: str, reference: str) -> bool:
    got, ref = extract_numeric(text), _as_number(reference)
    if got is None or ref is None:
        return got is not None and got == reference.strip()
    val = _as_number(got)
    return val is not None and val == ref


def extract_math(text: str) -> Optional[str]:
    boxed = last_boxed(text)
    return boxed if boxed is not None else extract_numeric(text)


def verify_math(text: str, reference: str) -> bool:
    mv = require("math_verify", "math", "the 'math' verifier")
    gold = mv.parse(reference if "\\boxed" in reference or "$" in reference else f"${reference}$")
    pred = mv.parse(text)
    if not gold or not pred:
        return False
    return bool(mv.verify(gold, pred))


VERIFIERS: dict[str, tuple[Callable[[str], Optional[str]], Callable[[str, str], bool]]] = {
    "exact": (extract_exact, verify_exact),
    "numeric": (extract_numeric, verify_numeric),
    "math": (extract_math, verify_math),
}
