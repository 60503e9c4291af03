"""BENCHMARKS.md says only what its results JSONs hold.

The rule, for whoever adds a table:

- Every markdown table in BENCHMARKS.md belongs to the section it sits in (from its heading to the
  next heading). Its *sources* are the results files named as `benchmarks/results/NAME.json` (or
  `results/NAME.json`) in that section's text or in the text of the sections above it (a `###`
  inherits what its `##` names before its first subsection). A table whose section names none fails.
- Every number in a table's body, except in its first column (the row's label: method settings,
  vocabulary sizes), in a column headed "target..." (the issue's goal, not a result) and inside
  `code spans` (commands, option values), must be a value of one
  of its sources as displayed: a number leaf of the JSON, or the mean or standard deviation of a
  list of numbers, rounded to the digits shown ("0.823" matches 0.8234); "0.823 ± 0.038" must be the
  mean and std of one list (or a stored [mean, std] pair, or a dict's "mean" and "std");
  "96.6%" matches 0.966 or 96.6; "1.79M" / "167k" / "4.89 GiB" / "548 MiB" / "6 min 30 s" are
  scaled; "8/8" and "0.586 / 0.660" are separate numbers.
- A line `<!-- numbers: NAME.json KEY[/KEY...] ... -->` just before a table narrows its sources to
  those parts of the file (a big results file holds almost every short number somewhere: a table
  of one part should be checked against that part).
- A table with a `verdict` column is a list of orderings (benchmarks/_verdict.py prints them): each
  row's ordering must be one of its sources' `verdicts`, with the same verdict word, and the row's
  numbers (per-seed values, mean difference, standard error) must be that ordering's own.

Pure text and JSON: no torch, no runs.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"

SOURCE = re.compile(r"(?:benchmarks/)?results/([A-Za-z0-9_\-]+)\.json")
NUMBER = re.compile(
    r"(?<![\w.])([-+−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)"
    r"\s*(%|x\b|k\b|M\b|GiB\b|MiB\b|kB\b|min\b|s\b)?", re.IGNORECASE)
NARROW = re.compile(r"<!-- numbers: (.*?) -->")
SCALE = {"k": 1e3, "m": 1e6, "gib": 2**30, "mib": 2**20, "kb": 1e3}


def sections(text: str) -> list[dict]:
    """[{level, title, lines, sources}], sources including those of the enclosing sections' text."""
    out, stack = [], []
    cur = {"level": 0, "title": "", "lines": [], "start": 0}
    out.append(cur)
    in_code = False
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"(#+) (.*)", line) if not in_code else None
        if m:
            cur = {"level": len(m.group(1)), "title": m.group(2).strip(), "lines": [], "start": i}
            out.append(cur)
        else:
            cur["lines"].append((i, line))
    for sec in out:
        own = set(SOURCE.findall("\n".join(line for _, line in sec["lines"])))
        while stack and stack[-1]["level"] >= sec["level"]:
            stack.pop()
        sec["sources"] = own.union(*(s["own"] for s in stack)) if stack else own
        sec["own"] = own
        stack.append(sec)
    return out


def tables(sec: dict) -> list[dict]:
    """The markdown tables of a section: {line, header, rows: [(line number, cells)]}."""
    found, cur, narrow = [], None, None
    for i, line in sec["lines"]:
        m = NARROW.match(line.strip())
        if m:
            narrow = m.group(1).split()
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cur is None:
                cur = {"line": i, "header": cells, "rows": [], "narrow": narrow}
                found.append(cur)
                narrow = None
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                cur["rows"].append((i, cells))
        else:
            cur = None
    return found


def numbers(cell: str) -> list[tuple[float, float, str]]:
    """(value, half of the last digit shown, the text) for each number in a cell, scaled to the JSON's units."""
    cell = re.sub(r"`[^`]*`", " ", cell).replace("**", "").replace("\\|", "|")
    out = []
    mins = re.compile(r"(\d+)\s*min\s*(\d+)\s*s\b")
    for m in mins.finditer(cell):
        out.append((60 * float(m.group(1)) + float(m.group(2)), 0.5, m.group(0)))
    cell = mins.sub(" ", cell)
    for m in NUMBER.finditer(cell):
        raw, unit = m.group(1).replace(",", "").replace("−", "-"), (m.group(2) or "").lower()
        decimals = len(raw.split(".")[1]) if "." in raw and "e" not in raw.lower() else 0
        half = 0.5 * 10 ** -decimals if "e" not in raw.lower() else abs(float(raw)) * 0.05
        value = float(raw)
        scale = SCALE.get(unit, 1.0) if unit != "min" else 60.0
        out.append((value * scale, half * scale, m.group(0).strip()))
    return out


def _leaves(obj, out: list[float]) -> None:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out.append(float(obj))
    elif isinstance(obj, dict):
        for v in obj.values():
            _leaves(v, out)
    elif isinstance(obj, list):
        nums = [float(v) for v in obj if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(nums) == len(obj) and len(nums) > 1 and all(math.isfinite(v) for v in nums):
            out.extend([statistics.mean(nums), statistics.stdev(nums), statistics.pstdev(nums)])
        for v in obj:
            _leaves(v, out)
    elif isinstance(obj, str):
        return


def candidates(data: dict) -> list[float]:
    out: list[float] = []
    _leaves(data, out)
    return sorted(set(out))


def pairs(obj, out: list | None = None) -> list[tuple[float, float]]:
    """Every (mean, std) a JSON holds: a list's mean with its std, a [mean, std] pair, a dict's
    "mean" and "std"."""
    out = [] if out is None else out
    if isinstance(obj, dict):
        if isinstance(obj.get("mean"), (int, float)) and isinstance(obj.get("std"), (int, float)):
            out.append((float(obj["mean"]), float(obj["std"])))
        for v in obj.values():
            pairs(v, out)
    elif isinstance(obj, list):
        nums = [float(v) for v in obj if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(nums) == len(obj) and len(nums) > 1:
            out.extend([(statistics.mean(nums), statistics.stdev(nums)), (statistics.mean(nums), statistics.pstdev(nums))])
            if len(nums) == 2:
                out.append((nums[0], nums[1]))
        for v in obj:
            pairs(v, out)
    return out


PLUS_MINUS = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(?:±|\+-)\s*(\d+(?:\.\d+)?)")


def _half(text: str) -> float:
    return 0.5 * 10 ** -(len(text.split(".")[1]) if "." in text else 0) * (1 + 1e-6) + 1e-12


def found(value: float, half: float, text: str, pool: list[float]) -> bool:
    """Whether a shown number is some value of the (sorted) pool, rounded as shown."""
    tol = half * (1 + 1e-6) + 1e-12
    options = [(value, tol)] + ([(value / 100, tol / 100)] if text.endswith("%") else [])
    for target, t in options:
        i = bisect.bisect_left(pool, target - t)
        if i < len(pool) and pool[i] <= target + t:
            return True
    return False


def verdicts(obj) -> list[dict]:
    """Every `verdicts` list anywhere in a results JSON (a script may judge per part)."""
    if isinstance(obj, dict):
        own = obj.get("verdicts", []) if isinstance(obj.get("verdicts"), list) else []
        return own + [v for k, x in obj.items() if k != "verdicts" for v in verdicts(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in verdicts(x)]
    return []


def narrowed(datas: dict, narrow: list[str] | None, where: str, problems: list[str]) -> list:
    """The parts of the sources a table's numbers may come from: the whole files, or where a
    `<!-- numbers: NAME.json KEY[/KEY...] ... -->` line precedes the table, the subtrees it names
    (each KEY path applies to the last NAME.json before it)."""
    if not narrow:
        return list(datas.values())
    out, name = [], None
    for word in narrow:
        if word.endswith(".json"):
            name = word[:-5]
            if name not in datas:
                problems.append(f"{where}: narrows to {word}, which its section does not name")
                return []
            continue
        node = datas.get(name) if name else None
        for key in word.split("/"):
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            problems.append(f"{where}: {name}.json has no {word!r}")
        else:
            out.append(node)
    return out


_POOLS: dict = {}


def _pools(results_dir: str, names: tuple, narrow: tuple, parts: list) -> tuple[list, list]:
    """The values and (mean, std) pairs of a table's sources, computed once per run of the tests."""
    files = [Path(results_dir) / f"{n}.json" for n in names]
    key = (results_dir, names, narrow, tuple(f.stat().st_mtime_ns if f.is_file() else 0 for f in files))
    if key not in _POOLS:
        _POOLS[key] = (sorted(set().union(*(candidates(d) for d in parts))), [p for d in parts for p in pairs(d)])
    return _POOLS[key]


def check(doc: str, results_dir: Path) -> list[str]:
    """Every problem with the tables of `doc` against the results in `results_dir`, one line each."""
    problems, cache = [], {}

    def load(name):
        if name not in cache:
            path = results_dir / f"{name}.json"
            cache[name] = json.loads(path.read_text()) if path.is_file() else None
        return cache[name]

    for sec in sections(doc):
        for table in tables(sec):
            where = f"BENCHMARKS.md:{table['line']} ({sec['title'] or 'top'})"
            if not sec["sources"]:
                problems.append(f"{where}: a table in a section that names no benchmarks/results/*.json")
                continue
            datas = {name: load(name) for name in sorted(sec["sources"])}
            for name, data in datas.items():
                if data is None:
                    problems.append(f"{where}: names benchmarks/results/{name}.json, which does not exist")
            datas = {k: v for k, v in datas.items() if v is not None}
            parts = narrowed(datas, table["narrow"], where, problems)
            pool, pair_pool = _pools(str(results_dir), tuple(sorted(datas)), tuple(table["narrow"] or ()), parts)
            header = [h.lower() for h in table["header"]]
            if "verdict" in header:
                known = {(v["claim"], v["verdict"]) for d in datas.values() for v in verdicts(d)}
                claims = {c for c, _ in known}
                col = header.index("verdict")
                for line, cells in table["rows"]:
                    claim, said = cells[0], cells[col].replace("*", "").strip()
                    if claim not in claims:
                        problems.append(f"BENCHMARKS.md:{line}: ordering {claim!r} is not in the `verdicts` of "
                                        f"{', '.join(sorted(datas))}")
                    elif (claim, said) not in known:
                        problems.append(f"BENCHMARKS.md:{line}: {claim!r} says {said!r}; the JSON says "
                                        f"{next(v for c, v in known if c == claim)!r}")
            skip = {0} | {i for i, h in enumerate(header) if h.startswith("target")}
            entries = {v["claim"]: v for d in datas.values() for v in verdicts(d)}
            for line, cells in table["rows"]:
                row_pool = pool
                if "verdict" in header and cells[0] in entries:  # an ordering's numbers: its own entry's
                    row_pool = candidates(entries[cells[0]])
                for cell in (c for i, c in enumerate(cells) if i not in skip):
                    cell = re.sub(r"`[^`]*`", " ", cell).replace("**", "")
                    for m in PLUS_MINUS.finditer(cell):  # "mean ± std": both, of one list
                        mean, std = float(m.group(1)), float(m.group(2))
                        hm, hs = _half(m.group(1)), _half(m.group(2))
                        if not any(abs(a - mean) <= hm and abs(b - std) <= hs for a, b in pair_pool):
                            problems.append(f"BENCHMARKS.md:{line}: {m.group(0)!r} is no mean ± std of "
                                            f"{', '.join(f'results/{n}.json' for n in sorted(datas))}")
                    cell = PLUS_MINUS.sub(" ", cell)
                    for value, half, text in numbers(cell):
                        if not found(value, half, text, row_pool):
                            problems.append(f"BENCHMARKS.md:{line}: {text!r} is in no value of "
                                            f"{', '.join(f'results/{n}.json' for n in sorted(datas))}")
    return problems


def test_every_table_number_is_in_its_results_json():
    problems = check(DOC.read_text(), RESULTS)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def test_a_changed_number_is_caught(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"acc": [0.8234, 0.7, 0.9], "t": 37.64, "bytes": 5251989504,
                                                 "verdicts": [{"claim": "a > b", "verdict": "unresolved"}]}))
    doc = ("## A section\n\nResults in `benchmarks/results/x.json`.\n\n"
           "| row | acc | t | mem |\n|---|---:|---:|---:|\n| a | {acc} | {t} | +{mem} GiB |\n\n"
           "| ordering | verdict |\n|---|---|\n| a > b | **{word}** |\n")
    good = {"acc": "0.823", "t": "37.6 s", "mem": "4.89", "word": "unresolved"}
    assert check(doc.format(**good), tmp_path) == []
    assert check(doc.format(**{**good, "acc": "0.808 ± 0.101"}), tmp_path) == []  # mean and std of the list
    for key, bad in (("acc", "0.833"), ("t", "37.8 s"), ("mem", "4.91"), ("acc", "0.808 ± 0.090")):
        problems = check(doc.format(**{**good, key: bad}), tmp_path)
        assert len(problems) == 1 and ("is in no value" in problems[0] or "no mean ± std" in problems[0]), (key, problems)
    problems = check(doc.format(**{**good, "word": "holds"}), tmp_path)
    assert len(problems) == 1 and "the JSON says 'unresolved'" in problems[0]
    assert "names no benchmarks/results" in check(doc.replace("Results in `benchmarks/results/x.json`.", "")
                                                    .format(**good), tmp_path)[0]


def test_a_changed_number_in_the_real_document_is_caught():
    doc = DOC.read_text()
    secs = [s for s in sections(doc) if s["sources"] and tables(s)]
    assert secs
    lines = doc.splitlines()
    mutated = 0
    for sec in secs[:: max(1, len(secs) // 8)]:
        line, cells = tables(sec)[0]["rows"][0]
        nums = [t for c in cells[1:] for _, _, t in numbers(c)]
        if not nums:
            continue
        old = lines[line - 1]
        text = nums[0]
        lines[line - 1] = old.replace(text, "987654.3" + text[len(text.rstrip('%xsk ')):], 1)
        problems = check("\n".join(lines), RESULTS)
        lines[line - 1] = old
        assert any(p.startswith(f"BENCHMARKS.md:{line}:") for p in problems), (line, text)
        mutated += 1
    assert mutated >= 3


if __name__ == "__main__":
    pytest.main([__file__, "-q"])


# ---------------------------------------------------------------- the verdict rule (benchmarks/_verdict.py)
def _verdict_module():
    import importlib.util
    import sys

    if "_verdict" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_verdict", ROOT / "benchmarks" / "_verdict.py")
        sys.modules["_verdict"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["_verdict"])
    return sys.modules["_verdict"]


def test_verdict_rule():
    verdict = _verdict_module().verdict
    # the example: retort vs curator on the real server, 3 repetitions, 1.07x: unresolved
    retort, curator = [1241.2, 1144.3, 1282.9], [1119.6, 1183.8, 1122.6]
    v = verdict(retort, curator, ">")
    assert v["verdict"] == "unresolved" and v["every_seed"] == 0 and abs(v["z"]) < 2
    assert verdict(retort, curator, ">", paired=False)["verdict"] == "unresolved"  # 1.75 se unpaired
    # every seed agrees: holds, however small the gap; every seed against: does not hold
    assert verdict([0.5, 0.61, 0.7], [0.49, 0.6, 0.69], ">")["verdict"] == "holds"
    assert verdict([0.49, 0.6, 0.69], [0.5, 0.61, 0.7], ">")["verdict"] == "does not hold"
    assert verdict([0.49, 0.6, 0.69], [0.5, 0.61, 0.7], "<")["verdict"] == "holds"
    # one seed against, but the mean difference beyond two standard errors: holds
    v = verdict([1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.01], ">")
    assert v["every_seed"] == 0 and v["z"] >= 2 and v["verdict"] == "holds"
    # ">=" accepts equal seeds; ">" does not
    assert verdict([0.9, 0.8], [0.9, 0.8], ">=")["verdict"] == "holds"
    assert verdict([0.9, 0.8], [0.9, 0.8], ">")["verdict"] == "unresolved"
    # one seed resolves nothing; a claimed equality never holds
    assert verdict([0.9], [0.1], ">")["verdict"] == "unresolved"
    assert verdict([0.5, 0.6, 0.7], [0.51, 0.58, 0.71], "~")["verdict"] == "unresolved"
    assert verdict([0.5, 0.6, 0.7], [0.4, 0.5, 0.6], "~")["verdict"] == "does not hold"
    with pytest.raises(ValueError, match="one per seed"):
        verdict([1, 2, 3], [1, 2], ">")


def test_the_results_verdicts_are_the_rules():
    """Every `verdicts` entry in benchmarks/results says what the rule says of its own per-seed values."""
    verdict = _verdict_module().verdict
    seen = 0
    for path in sorted(RESULTS.glob("*.json")):
        for v in verdicts(json.loads(path.read_text())):
            again = verdict(v["a"], v["b"], v["rel"], paired=v.get("paired", True))["verdict"]
            assert again == v["verdict"], (path.name, v["claim"], v["verdict"], again)
            seen += 1
    assert seen >= 50


def test_a_small_slip_in_a_narrowed_table_is_caught():
    """Within a big results file a table is checked against its own part: the ring teacher's old
    "±" (over arms x seeds, 0.22) or a rounding slip (1.28 for 1.2745) no longer pass by coincidence."""
    doc = DOC.read_text()
    assert not [p for p in check(doc, RESULTS) if "ring" in p]
    for good, bad in (("| 35 | 0.91 ± 0.27 |", "| 35 | 0.91 ± 0.22 |"), ("| 1 | 1.27 ± 0.36 |", "| 1 | 1.28 ± 0.36 |")):
        assert doc.count(good) == 1, good
        problems = check(doc.replace(good, bad), RESULTS)
        assert any(bad.split("|")[2].split("±")[-1].strip() in p or bad.split("|")[2].split("±")[0].strip() in p
                   for p in problems), (bad, problems)
