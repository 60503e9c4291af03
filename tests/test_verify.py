import pytest

from retort.lm.tasks.verify import (extract_exact, extract_numeric, last_boxed, verify_exact, verify_math,
                                 verify_numeric)


def test_last_boxed_handles_nesting():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}} end") == r"\frac{1}{2}"
    assert last_boxed("none") is None


@pytest.mark.parametrize("text, ref, ok", [
    ("The answer is 42.", "42", True),
    ("A:1,234", "1234", True),
    ("x = 0.50", "1/2", True),
    ("steps 3 4 5\nA:7", "7", True),
    ("A:8", "7", False),
    ("no number", "7", False),
    (r"so \boxed{-3}", "-3", True),
])
def test_numeric(text, ref, ok):
    assert verify_numeric(text, ref) is ok


def test_exact():
    assert verify_exact("work\nA: Paris ", "Paris")
    assert not verify_exact("A:paris", "Paris")
    assert extract_exact("Answer: blue\nmore") == "blue"
    assert extract_numeric("Answer: 3 apples and 4") == "4"


def test_math_verify_equivalence():
    pytest.importorskip("math_verify")
    assert verify_math(r"Thus \boxed{\frac{1}{2}}", "0.5")
    assert verify_math(r"\boxed{\frac{2}{4}}", r"\frac{1}{2}")
    assert not verify_math(r"\boxed{3}", "4")
