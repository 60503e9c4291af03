"""Answer formats (`task.answer`): how a task asks for its answer and how the answer is read back.

- `marker`: the text after the last `A:`, to the end of its line. retort's own models are trained
  to write it (the built-in tasks' default); read strictly, without fallbacks, so the built-in
  tasks' scores stay what they were.
- `boxed`: the content of the last `\\boxed{...}` (nested braces kept).
- `tag`: the content of the last `<answer>...</answer>` (reasoning-gym's convention, read as its
  `extract_answer` reads it); an `<answer>` never closed (a stop string `</answer>`, or the length
  limit) gives the text after it.
- `final_number`: the last number of the completion that is not a number of the question restated
  (below).
- `last_line`: the last non-empty line (inside its `<answer>` tag or `\\boxed{}`, or after its
  answer phrase, when it has one).

Fallback order: a mode other than `marker` reads its own format first; when that finds nothing
(and `task.strict` is off) the others are tried in the order `FALLBACK`: `tag`, `boxed`, an answer
phrase ("The answer is 5.", "Answer: 5", "A:5", "#### 5", to the end of the line), then
`final_number`. `last_line` is never a fallback: it always finds something, so a format failure
would read as a wrong answer. Nothing found by any of them is "no answer" (`retort eval` counts
these apart from wrong answers).

A number of the question restated is never the answer: with the question known, `final_number`
skips a number that the question also contains unless it is presented as a result (right after
`=`, "equals", "answer is", "result is", "sum is" and the like) or is the whole completion. So for
"What is 0 + 4?", "The product of two integers is 4." has no answer, "0 + 4 = 4" and "4" answer 4;
and "381 - 121 = 260" answers 260 (the last number), never 381.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

MARKER = "A:"
MODES = ("marker", "boxed", "tag", "final_number", "last_line")
FALLBACK = ("tag", "boxed", "phrase", "final_number")

# what the prompt says, for a template's {format}
INSTRUCTIONS = {
    "marker": f"Answer on a last line {MARKER}<answer>.",
    "boxed": "Put the final answer in \\boxed{}.",
    "tag": "Give the final answer between <answer> and </answer> tags.",
    "final_number": "Answer with the number only.",
    "last_line": "Write the final answer alone on the last line.",
}

# a number: an optional sign only where it cannot be a binary minus ("5-3" is 5 and 3, "= -2" is -2),
# thousands separators, decimals, a fraction; never digits inside a word ("SmolLM2", "x2")
_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?<![A-Za-z_\d.])\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?(?![\w])")
# what presents a number as the result (the question's own numbers count after these)
_RESULT_CUE = re.compile(r"(?:=|\bequals?|\b(?:answer|result|sum|total|difference|product|quotient|value|solution)"
                         r"\s*(?:is|:|=|would be|will be)?(?:\s+(?:equal\s+to|about|exactly))?)"
                         r"[\s:*$\\{(]*$", re.IGNORECASE)
_PHRASE = re.compile(r"(?i:\banswer)\s*(?:is\s*:?|:)\s*|\bA:\s*|####\s*")
_BOXED = re.compile(r"\\boxed\{")
# a number that opens an answer, then its end, punctuation or words (not an operator: "3 + 2" is whole)
_LEAD_NUMBER = re.compile(r"(-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?)(?=\s*$|[.,;:!)]|\s+[A-Za-z(])")
_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)


def _clean(s: str) -> Optional[str]:
    """An answer without markdown emphasis, surrounding `$`, and a sentence's final full stop."""
    s = s.strip().strip("*").strip()
    if len(s) > 1 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    if s.endswith(".") and not re.search(r"\.\d*\.$", s):
        s = s[:-1].rstrip().strip("*").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # 1,234: the number, as final_number reads it
        s = s.replace(",", "")
    return s or None


def read_marker(text: str, question: Optional[str] = None) -> Optional[str]:
    i = text.rfind(MARKER)
    if i < 0:
        return None
    return text[i + len(MARKER):].split("\n", 1)[0].strip() or None


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


def read_boxed(text: str, question: Optional[str] = None) -> Optional[str]:
    got = last_boxed(text)
    return got or None


def read_tag(text: str, question: Optional[str] = None) -> Optional[str]:
    found = _TAG.findall(text)
    if found:
        return found[-1].strip() or None
    i, j = text.rfind("<answer>"), text.rfind("</answer>")
    if i >= 0 and i > j:  # opened and never closed: cut by a stop string or the length limit
        return _clean(text[i + len("<answer>"):])
    return None


def read_phrase(text: str, question: Optional[str] = None) -> Optional[str]:
    """The rest of the line after the last answer phrase ("The answer is", "Answer:", "A:", "####"):
    the number that opens it when words or a remark follow ("9 (checked)", "5 apples"), else all of
    it ("Paris", "3x + 2")."""
    last = None
    for m in _PHRASE.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end():].split("\n", 1)[0].strip().strip("*").strip()
    lead = _LEAD_NUMBER.match(rest)
    return _value(lead.group(1)) if lead else _clean(rest)


def numbers(text: str) -> list[re.Match]:
    return list(_NUMBER.finditer(text))


def _value(s: str) -> str:
    return s.replace(",", "")


def read_final_number(text: str, question: Optional[str] = None) -> Optional[str]:
    found = numbers(text)
    if not found:
        return None
    asked = {_value(m.group()) for m in numbers(question)} if question else set()
    if len(found) == 1 and re.fullmatch(r"[\s*$\\{}()\[\].:,]*", text[:found[0].start()] + text[found[0].end():]):
        return _value(found[0].group())  # the whole completion is the number
    for m in reversed(found):
        value = _value(m.group())
        if value not in asked or _RESULT_CUE.search(text[max(0, m.start() - 40):m.start()]):
            return value
    return None


def read_last_line(text: str, question: Optional[str] = None) -> Optional[str]:
    """The last non-empty line, from after its last answer phrase when it has one ("The answer is
    Paris." is Paris)."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    return read_tag(last) or read_boxed(last) or read_phrase(last) or _clean(last)


READERS: dict[str, Callable[[str, Optional[str]], Optional[str]]] = {
    "marker": read_marker, "boxed": read_boxed, "tag": read_tag, "phrase": read_phrase,
    "final_number": read_final_number, "last_line": read_last_line,
}


def extract(text: str, mode: str, question: Optional[str] = None, *, strict: bool = False) -> Optional[str]:
    """The answer in `text` in format `mode`, else (not `strict`, not `marker`) the first found by
    the `FALLBACK` readers in order; None when there is none. `question`: the prompt, whose
    numbers restated are never read as the answer."""
    got = READERS[mode](text, question)
    if got is not None or strict or mode == "marker":
        return got
    for other in FALLBACK:
        if other != mode:
            got = READERS[other](text, question)
            if got is not None:
                return got
    return None


def completion_of(answer: str, mode: str) -> str:
    """A completion that states `answer` in format `mode` (what a worked solution ends with)."""
    return {"boxed": f"\\boxed{{{answer}}}", "tag": f"<answer>{answer}</answer>",
            "marker": f"{MARKER}{answer}"}.get(mode, answer)


__all__ = ["FALLBACK", "INSTRUCTIONS", "MARKER", "MODES", "READERS", "completion_of", "extract", "last_boxed",
           "numbers"]
