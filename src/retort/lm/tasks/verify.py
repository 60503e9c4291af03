"""Answer verifiers for user tasks: `exact`, `numeric`, and `math` (math-verify, for \\boxed{} answers).

Each is a reader (the answer in a completion, as the verifier has always read it: a \\boxed{} first,
else the text after the last answer marker) and a comparison with the reference (`COMPARE`, also
used when `task.answer` names another format). The numeric reader never takes a number of the
question restated (`answers.read_final_number`).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Optional

from ...errors import require
from .answers import MARKER as ANSWER_MARK
from .answers import last_boxed, read_final_number


def _after_marker(text: str) -> str:
    for mark in (ANSWER_MARK, "Answer:", "answer:", "####"):
        i = text.rfind(mark)
        if i >= 0:
            return text[i + len(mark):]
    return text


def extract_exact(text: str, question: Optional[str] = None) -> Optional[str]:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tail = _after_marker(text).strip()
    return tail.split("\n", 1)[0].strip() or None


def extract_numeric(text: str, question: Optional[str] = None) -> Optional[str]:
    """The last number of the \\boxed{} answer, else of the text after the last answer marker, else
    of the whole completion, that is not a number of `question` restated."""
    boxed = last_boxed(text)
    return read_final_number(boxed if boxed is not None else _after_marker(text), question)


def _as_number(s: str) -> Optional[Fraction]:
    try:
        return Fraction(s.replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def same_exact(got: str, reference: str) -> bool:
    return " ".join(got.split()) == " ".join(reference.split())


def same_number(got: str, reference: str) -> bool:
    ref = _as_number(reference)
    if ref is None:
        return got.strip() == reference.strip()
    val = _as_number(got)
    if val is None:  # "5 apples": its number
        number = read_final_number(got)
        val = _as_number(number) if number is not None else None
    return val is not None and val == ref


def same_math(got: str, reference: str) -> bool:
    return verify_math(f"\\boxed{{{got}}}", reference)


def verify_exact(text: str, reference: str, question: Optional[str] = None) -> bool:
    got = extract_exact(text)
    return got is not None and same_exact(got, reference)


def verify_numeric(text: str, reference: str, question: Optional[str] = None) -> bool:
    got = extract_numeric(text, question)
    return got is not None and same_number(got, reference)


def extract_math(text: str, question: Optional[str] = None) -> Optional[str]:
    boxed = last_boxed(text)
    return boxed if boxed is not None else extract_numeric(text, question)


def verify_math(text: str, reference: str, question: Optional[str] = None) -> bool:
    mv = require("math_verify", "math", "the 'math' verifier")
    gold = mv.parse(reference if "\\boxed" in reference or "$" in reference else f"${reference}$")
    pred = mv.parse(text)
    if not gold or not pred:
        return False
    return bool(mv.verify(gold, pred))


VERIFIERS: dict[str, tuple[Callable[..., Optional[str]], Callable[..., bool]]] = {
    "exact": (extract_exact, verify_exact),
    "numeric": (extract_numeric, verify_numeric),
    "math": (extract_math, verify_math),
}
# how an answer read in a `task.answer` format is compared with the reference
COMPARE: dict[str, Callable[[str, str], bool]] = {"exact": same_exact, "numeric": same_number, "math": same_math}
