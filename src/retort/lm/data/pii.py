"""A rule-based detector of private information in text, and its score per token: the privacy score
rho that `method=swing` raises a token's temperature with (methods/other.md §3.2: "a detector (NER/
PII tagger or regex for names, numbers, e-mails, addresses) outputs rho_i").

Rules (`RULES`), each with a score in [0, 1] (the spec: a probability that the text is private):
- `email`  an e-mail address (name@host.tld);
- `phone`  a phone number: an optional +country code, then 7 or more digits in groups separated by
           spaces, dots, dashes or brackets (555-123-4567, +44 20 7946 0958, (555) 123 4567);
- `number` a long number: 4 or more digits, optionally with a single space or dash between them
           (account numbers, PINs spelt "1 2 3 4 5 6", dates like 1984);
- `digit`  any digit (arithmetic is digits too: leave this rule out for numeric tasks);
- `name`   a capitalised word that does not start a sentence (and is not a common capitalised word:
           I, days, months, titles), a word after a title (Mr, Mrs, Ms, Dr, Prof), or a first name
           from a small list anywhere.
A character's score is the highest of the rules that match it; a token's, the highest of its
characters'. `parse_rules("email:1,digit:0.5")` reads the `method_args` form.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,3}(?!\w)")
NUMBER = re.compile(r"(?<!\d)\d(?:[ -]?\d){3,}(?!\d)")
DIGIT = re.compile(r"\d")
WORD = re.compile(r"\b[A-Z][a-z]+(?:['-][A-Za-z][a-z]+)?\b")
TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof)\.? +([A-Z][a-z]+)")
SENTENCE_ENDS = ".!?:\n\"'>"  # a capitalised word after one of these (and spaces) starts a sentence
# capitalised words that are not names (sentence openers, days, months, titles, chat roles)
NOT_NAMES = frozenset({
    "I", "A", "The", "This", "That", "These", "Those", "There", "Then", "What", "When", "Where", "Which", "Who",
    "Why", "How", "Yes", "No", "Not", "And", "But", "Or", "If", "So", "Answer", "Question", "Step", "Let", "Total",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January", "February", "March",
    "April", "May", "June", "July", "August", "September", "October", "November", "December", "Mr", "Mrs", "Ms",
    "Dr", "Prof", "User", "Assistant", "System"
})
# first names flagged wherever they stand, a sentence's first word included
FIRST_NAMES = frozenset({
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William", "Elizabeth", "David",
    "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Nancy",
    "Matthew", "Lisa", "Anthony", "Emma", "Mark", "Olivia", "Paul", "Sophia", "Alice", "Bob", "Carol", "Dave",
    "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Maria", "Ahmed", "Mohammed", "Wei", "Li", "Yuki", "Priya",
    "Raj", "Fatima", "Carlos", "Ana", "Juan"
})

RULES = ("email", "phone", "number", "digit", "name")
DEFAULT_RULES = "email:1,phone:1,number:1,name:0.5,digit:0.5"


def parse_rules(spec: str) -> dict[str, float]:
    """`RULE[:SCORE],...` (score 1 when left out) -> {rule: score}; ValueError naming what is wrong."""
    rules: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, score = part.partition(":")
        name = name.strip()
        if name not in RULES:
            raise ValueError(f"unknown rule {name!r}; rules: {', '.join(RULES)}")
        try:
            value = float(score) if score.strip() else 1.0
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"rule {name}: score {score.strip()!r} is not a number in [0, 1]")
        rules[name] = value
    return rules


def _starts_sentence(text: str, at: int) -> bool:
    before = text[max(0, at - 64):at].rstrip(" \t")
    return (not before and at <= 64) or (bool(before) and before[-1] in SENTENCE_ENDS)


def _names(text: str):
    for m in WORD.finditer(text):
        word = m.group(0)
        if word in FIRST_NAMES or (word not in NOT_NAMES and not _starts_sentence(text, m.start())):
            yield m.span()
    for m in TITLE.finditer(text):
        yield m.span(1)


def spans(text: str, rules: dict[str, float]) -> list[tuple[int, int, str]]:
    """(start, end, rule) of every match of the given rules in `text`, in rule order."""
    found = []
    for name, pattern in (("email", EMAIL), ("phone", PHONE), ("number", NUMBER), ("digit", DIGIT)):
        if name in rules:
            found += [(m.start(), m.end(), name) for m in pattern.finditer(text)
                      if name != "phone" or sum(ch.isdigit() for ch in m.group(0)) >= 7]
    if "name" in rules:
        found += [(a, b, "name") for a, b in _names(text)]
    return found


def char_scores(text: str, rules: dict[str, float]) -> list[float]:
    """rho per character of `text`: the highest score of the rules that match it, else 0."""
    rho = [0.0] * len(text)
    for a, b, name in spans(text, rules):
        for i in range(a, b):
            rho[i] = max(rho[i], rules[name])
    return rho


def token_pieces(tokenizer, ids: list[int], context: int = 8) -> list[str]:
    """The text each token adds to the decoded sequence: the decode of it with up to `context`
    tokens before it, less the decode of those tokens (so word-start spaces and byte-level merges come
    out as in the whole decode; a multi-byte character split over tokens falls to its last token)."""
    pieces = []
    for i in range(len(ids)):
        j = max(0, i - context)
        before = tokenizer.decode(ids[j:i]) if i > j else ""
        both = tokenizer.decode(ids[j:i + 1])
        if both.startswith(before):
            pieces.append(both[len(before):])
        else:  # the previous token ended inside a character that this one completes
            k = 0
            while k < min(len(before), len(both)) and before[k] == both[k]:
                k += 1
            pieces.append(both[k:])
    return pieces


def token_scores(tokenizer, ids: list[int], rules: dict[str, float]) -> list[float]:
    """rho per token of `ids`: the detector run on the decoded text, a token taking the highest score
    of its characters'."""
    pieces = token_pieces(tokenizer, list(ids))
    rho_chars = char_scores("".join(pieces), rules)
    out, pos = [], 0
    for piece in pieces:
        out.append(max(rho_chars[pos:pos + len(piece)], default=0.0))
        pos += len(piece)
    return out


__all__ = ["DEFAULT_RULES", "RULES", "char_scores", "parse_rules", "spans", "token_pieces", "token_scores"]
