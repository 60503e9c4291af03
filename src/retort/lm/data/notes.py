"""A synthetic private text corpus: templated patient and account notes with names, dates and
numbers (DP-OPD's private records, `benchmarks/privacy.py`), and public notes of the same style
for the teacher, deterministic by seed.

Each note is a task row (`retort.lm.tasks.files`): `prompt` its header ("Patient note:" or
"Account note:"), `solution` the note's text (what a student trains on and continues), `answer`
its identifying number (the account or record number). Private and public notes draw their first
names from disjoint halves of one list, and every number fresh, so the public notes share the
private ones' style and no person. Canaries are inserted afterwards by `retort audit canaries`
(`retort.audit.canaries.write_corpus` with `field=solution`), which records them in a manifest.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ...errors import ConfigError

FIRST = ("Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pavel", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wen", "Xavier",
         "Yara", "Zoe", "Amir", "Beth", "Carlos", "Dina", "Emil", "Fatima", "Gustav", "Hana", "Ivan", "Julia")
LAST = ("Smith", "Garcia", "Okafor", "Novak", "Schmidt", "Rossi", "Kowalski", "Tanaka", "Silva", "Dubois",
        "Jensen", "Murphy", "Haddad", "Petrov", "Nguyen", "Larsen", "Moreau", "Cohen", "Ali", "Kim")
CITIES = ("Leeds", "Lyon", "Porto", "Graz", "Turin", "Gdansk", "Bergen", "Ghent", "Cork", "Brno")
CONDITIONS = ("asthma", "type 2 diabetes", "hypertension", "a sprained ankle", "migraine", "anaemia",
              "a chest infection", "eczema", "back pain", "an ear infection")
DRUGS = ("salbutamol", "metformin", "amlodipine", "ibuprofen", "sumatriptan", "ferrous sulfate",
         "amoxicillin", "hydrocortisone", "naproxen", "paracetamol")
ACTIONS = ("a card payment of", "a transfer of", "a cash withdrawal of", "a direct debit of", "a refund of")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


def _name(rng: random.Random, public: bool) -> str:
    first = [f for i, f in enumerate(FIRST) if i % 2 == int(public)]
    return f"{rng.choice(first)} {rng.choice(LAST)}"


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(2015, 2024)}"


def note(rng: random.Random, public: bool) -> dict:
    """One note (a task row) drawn from `rng`."""
    name, date = _name(rng, public), _date(rng)
    if rng.random() < 0.5:
        number = f"{rng.randint(0, 10 ** 7 - 1):07d}"
        text = (f"{name}, aged {rng.randint(18, 90)}, of {rng.choice(CITIES)}, record {number}, was seen on {date} "
                f"for {rng.choice(CONDITIONS)}. Blood pressure {rng.randint(100, 170)}/{rng.randint(60, 100)}. "
                f"Prescribed {rng.choice(DRUGS)} {rng.choice((5, 10, 20, 50, 100, 250, 500))} mg, review in "
                f"{rng.randint(1, 12)} weeks. Phone {rng.randint(10 ** 9, 10 ** 10 - 1)}.")
        return {"prompt": "Patient note:", "solution": text, "answer": number}
    number = f"{rng.randint(0, 10 ** 8 - 1):08d}"
    text = (f"Account {number} held by {name} of {rng.choice(CITIES)}: on {date} {rng.choice(ACTIONS)} "
            f"{rng.randint(5, 5000)}.{rng.randint(0, 99):02d} EUR; balance {rng.randint(0, 90000)}.{rng.randint(0, 99):02d} "
            f"EUR. Sort code {rng.randint(10, 99)}-{rng.randint(10, 99)}-{rng.randint(10, 99)}, "
            f"PIN reset {rng.choice(('requested', 'not requested'))}.")
    return {"prompt": "Account note:", "solution": text, "answer": number}


def notes(n: int, *, seed: int, public: bool) -> list[dict]:
    """`n` notes, the same for the same seed (private and public streams apart)."""
    rng = random.Random(f"retort-notes:{seed}:{'public' if public else 'private'}")
    return [{"id": f"{'pub' if public else 'priv'}-{i}", **note(rng, public)} for i in range(n)]


def write_notes(out: str, *, n_private: int = 20000, n_public: int = 20000, seed: int = 0) -> dict:
    """Write OUT/private.jsonl and OUT/public.jsonl (new files only; OUT may exist); returns their paths."""
    from ...paths import atomic_write_text

    if n_private < 1 or n_public < 0:
        raise ConfigError(f"notes: expected at least one private note and no negative count, got {n_private}, {n_public}")
    out_p = Path(out)
    paths = {"private": out_p / "private.jsonl", "public": out_p / "public.jsonl"}
    for p in paths.values():
        if p.exists():
            raise ConfigError(f"{p}: exists; choose a new directory (the notes are written new)")
    out_p.mkdir(parents=True, exist_ok=True)
    for key, n in (("private", n_private), ("public", n_public)):
        rows = notes(n, seed=seed, public=key == "public")
        atomic_write_text(paths[key], "".join(json.dumps(r) + "\n" for r in rows))
    return {k: str(v) for k, v in paths.items()}


__all__ = ["note", "notes", "write_notes"]
