"""benchmarks/agents.py: its bookkeeping with the CLI stood in for (every student arm at the same
preset, steps and data size, each evaluated the way its arm says, rows and verdicts in the JSON,
--verdicts-only, a rerun that runs nothing), the CoT file it writes for calc, and, in the slow
tier, the toy part itself at a tiny size."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# what the stand-in evaluations answer: per row, per seed (0, 1, 2)
ACC = {"cot": [0.2, 0.3, 0.25], "agent": [0.5, 0.6, 0.55], "agent_ftp": [0.55, 0.62, 0.6],
       "agent_sag": [0.6, 0.65, 0.6], "agent_ftp_sag": [0.7, 0.7, 0.75], "program": [0.8, 0.9, 0.85],
       "program_cot": [0.6, 0.7, 0.6]}
EXEMPLARS = {"none": [0.9, 0.9, 0.9], "dynamic": [0.8, 0.85, 0.8], "static": [0.7, 0.8, 0.75],
             "random": [0.8, 0.85, 0.8]}


@pytest.fixture
def agents(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("agents", None)
    return importlib.import_module("agents")


def fake_cli(calls: list, empty: tuple = ()):
    """`sh` standing in for the CLI: records each command and writes what the script reads back
    (trace sets named in `empty` have no row)."""

    def value(args, key):
        return next((a.split("=", 1)[1] for a in args if a.startswith(key + "=")), None)

    def sh(args, log):
        calls.append(args)
        cmd = args[0]
        if cmd == "train":
            out = Path(value(args, "out"))
            (out / "model").mkdir(parents=True)
            (out / "summary.json").write_text("{}")
        elif cmd in ("traces", "curate"):
            out = Path(value(args, "out") or args[args.index("--out") + 1])
            out.mkdir(parents=True)
            stats = {"rows": 0, "prompts": 0} if out.name in empty else {"rows": 10, "prompts": 10, "accuracy": 0.5}
            if value(args, "split") == "test":  # an exemplar row
                select = value(args, "programs.select") if value(args, "programs.exemplars") != "0" else "none"
                stats["accuracy"] = EXEMPLARS[select][int(value(args, "seed"))]
            (out / "manifest.json").write_text(json.dumps({"complete": True, "stats": stats}))
        elif cmd == "eval":
            seed = int(value(args, "eval.seed") or 1234) - 1234
            sag = value(args, "agent.sag") is not None
            got = {}
            for i, a in enumerate(args):
                if a == "-m":
                    label = args[i + 1].split("=", 1)[0]
                    acc = ACC[label + ("_sag" if sag else "")][seed] if label in ACC else 0.9
                    got[label] = {"accuracy": acc, "agent_steps": 1.5,
                                  "kind": "text", "greedy": True}
            Path(args[args.index("--json") + 1]).write_text(json.dumps(got))
        return 1.0

    return sh


@pytest.mark.parametrize("part", ["toy", "rg"])
def test_every_arm_trains_alike_is_evaluated_its_way_and_the_json_states_the_orderings(agents, monkeypatch,
                                                                                         tmp_path, part):
    calls = []
    monkeypatch.setattr(agents, "sh", fake_cli(calls))
    out = tmp_path / "agents.json"
    argv = ["--part", part, "--work", str(tmp_path / "w"), "--json", str(out), "--steps", "7", "--n-prompts", "40"]
    results = agents.main(argv)
    trains = [c for c in calls if c[0] == "train" and "/seed" in next(a for a in c if a.startswith("out="))]
    arms = {"cot", "agent", "agent_ftp", "program"} | ({"program_cot"} if part == "toy" else set())
    assert len(trains) == 3 * len(arms)
    for c in trains:  # the toy's cot arm learns the worked arithmetic of the same questions
        cot = part == "toy" and c[-1].endswith("/cot")
        assert "train.steps=7" in c and "method=sft" in c and f"data.source={'solutions' if cot else 'traces'}" in c
        assert ("student.lora.r=16" in c) == (part == "rg")
        assert not cot or any(a.startswith("task.name=") and a.endswith("calc-cot.jsonl") for a in c)
    for s in range(3):  # one seed's arms: the same options but their task and data
        assert len({tuple(a for a in c if not a.startswith(("out=", "task.", "data.traces=", "data.source=")))
                    for c in trains if f"seed={s}" in c}) == 1
    traces = [c for c in calls if c[0] == "traces" and "split=test" not in c]
    assert all("n_prompts=40" in c for c in traces)
    ftp = next(c for c in traces if "agent.first_thought=cot" in c)
    # FTP's first thoughts: rg, the teacher's CoT trace set; toy, the calc teacher's own answers (agent.cot unset)
    assert [a for a in ftp if a.startswith("agent.cot=")] == ([f"agent.cot={tmp_path / 'w' / 'cot'}"] if part == "rg"
                                                              else [])
    assert sum("--agent-filter" in c for c in calls if c[0] == "curate") == 2
    evals = {Path(c[c.index("--json") + 1]).name + c[c.index("--json") + 1].split("seed")[1][0]: c
             for c in calls if c[0] == "eval" and "/seed" in c[c.index("--json") + 1]}
    assert len(evals) == 3 * 4
    for name, c in evals.items():
        labels = {c[i + 1].split("=")[0] for i, a in enumerate(c) if a == "-m"}
        assert ("agent.sag=4" in c) == ("sag" in name)
        assert ("agent=code" in c) == bool(labels & {"agent", "agent_ftp"}) or (part == "toy" and "cot" in labels)
        assert ("program=python" in c) == (labels == {"program"})

    # every command's options are keys its command takes, with values it accepts
    from retort.config import load_config
    from retort.lm.config import EvalRun, TracesRun, TrainRun

    kinds = {"traces": TracesRun, "train": TrainRun, "eval": EvalRun}
    for c in calls:  # seed 0's and the shared ones (the other seeds' differ in their seed only)
        if c[0] in kinds and not any(a in ("seed=1", "seed=2", "eval.seed=1235", "eval.seed=1236") for a in c):
            args = [a for i, a in enumerate(c[1:], 1) if "=" in a and c[i - 1] not in ("-m", "--json")]
            load_config(kinds[c[0]], None, args)

    assert results["rows"]["agent_ftp_sag"]["accuracy"] == {"0": 0.7, "1": 0.7, "2": 0.75}
    assert results["rows"]["exemplars:dynamic"]["mean"] == pytest.approx(0.81666, abs=1e-4)
    assert results["runs"]["0"]["students"]["agent"] == {"accuracy": 0.5, "agent_steps": 1.5}  # numbers only
    verdicts = {v["claim"].split(" (")[0]: v["verdict"] for v in results["verdicts"]}
    assert verdicts == {"agent + FTP + SAG > agent": "holds", "agent > CoT": "holds",
                        "agent + FTP + SAG > CoT": "holds", "agent + SAG > agent": "holds",
                        "program > CoT": "holds", "dynamic > static exemplars": "holds",
                        "dynamic > random exemplars": "unresolved"}
    cot_of_program = next(v for v in results["verdicts"] if v["claim"].startswith("program > CoT"))
    assert cot_of_program["b"] == (ACC["program_cot"] if part == "toy" else ACC["cot"])

    # a rerun with the same --work runs nothing but the (cached) teachers
    calls.clear()
    agents.main(argv)
    assert all(c[0] == "teacher" for c in calls)

    data = json.loads(out.read_text())
    data["runs"]["1"]["students"]["agent"]["accuracy"] = 0.1  # below CoT in one seed
    out.write_text(json.dumps(data))
    agents.main(["--part", part, "--json", str(out), "--verdicts-only"])
    again = {v["claim"].split(" (")[0]: v["verdict"] for v in json.loads(out.read_text())["verdicts"]}
    assert again["agent > CoT"] == "unresolved" and again["agent + FTP + SAG > CoT"] == "holds"


def test_an_arm_with_nothing_to_learn_is_skipped_and_its_orderings_wait(agents, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(agents, "sh", fake_cli(calls, empty=("ftp-ok",)))  # no FTP episode passed the filter
    results = agents.main(["--part", "rg", "--work", str(tmp_path / "w"), "--json", str(tmp_path / "a.json")])
    assert not any(c[0] == "train" and c[-1].endswith("agent_ftp") for c in calls)
    assert not any("agent_ftp=" in a for c in calls if c[0] == "eval" for a in c)
    assert results["skipped"] == {"agent_ftp": "its trace set has no correct row to train on"}
    assert "agent_ftp_sag" not in results["rows"] and "agent_sag" in results["rows"]
    assert [v["claim"].split(" (")[0] for v in results["verdicts"]] == [
        "agent > CoT", "agent + SAG > agent", "program > CoT", "dynamic > static exemplars",
        "dynamic > random exemplars"]


def test_verdicts_wait_for_every_seed_of_both_rows(agents):
    runs = {"0": {"students": {"agent": {"accuracy": 0.5}, "cot": {"accuracy": 0.2}}, "exemplars": {}},
            "1": {"students": {"agent": {"accuracy": 0.6}}, "exemplars": {}}}
    got = agents.summarise({"part": "rg", "seeds": [0, 1, 2], "runs": runs})
    assert got["rows"]["agent"]["accuracy"] == {"0": 0.5, "1": 0.6} and got["rows"]["cot"]["std"] == 0.0
    assert got["verdicts"] == []  # cot lacks seed 1; nothing else has both rows
    runs["1"]["students"]["cot"] = {"accuracy": 0.1}
    got = agents.summarise({"part": "rg", "seeds": [0, 1, 2], "runs": runs})
    assert [v["claim"].split(" (")[0] for v in got["verdicts"]] == ["agent > CoT"]
    assert got["verdicts"][0]["verdict"] == "holds" and "| agent | 0.500 | 0.600 |" in agents.markdown(got)


def test_calc_cot_file_writes_the_arithmetic_of_the_agent_runs_questions(agents, tmp_path):
    from retort.lm.config import TaskConfig
    from retort.lm.tasks import get_task

    path = tmp_path / "cot.jsonl"
    agents.write_calc_cot(path, 30)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    calc = get_task(TaskConfig(name="calc")).examples("train", 30, 0)
    assert [r["prompt"] for r in rows] == [str(e.prompt) for e in calc]
    for r in rows:
        lines = r["solution"].splitlines()
        assert lines[-1] == f"A:{r['answer']}" and "```" not in r["solution"]
        value = None
        for line in lines[:-1]:
            a, op, b, result = re.fullmatch(r"(-?\d+)([-+*])(\d+)=(-?\d+)", line).groups()
            assert value is None or int(a) == value
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(result)
            value = int(result)
        assert str(value) == r["answer"]


@pytest.mark.slow
@pytest.mark.timeout(5400)  # the three built-in teachers train first (about an hour)
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_the_toy_part_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "agents.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "agents.py"), "--part", "toy", "--work",
                           str(tmp_path / "w"), "--seeds", "0", "1", "--n-prompts", "40", "--steps", "4",
                           "--n-test", "8",
                           "--n-exemplar-test", "8", "--json", str(out)], check=False, capture_output=True, text=True,
                          env={**os.environ, "RETORT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["rows"]) == {"cot", "agent", "agent_sag", "agent_ftp", "agent_ftp_sag", "program",
                                    "program_cot", "exemplars:none", "exemplars:dynamic", "exemplars:static",
                                    "exemplars:random"}
    assert all(len(r["accuracy"]) == 2 for r in results["rows"].values()) and len(results["verdicts"]) == 7
    assert results["traces"]["agent"]["prompts"] == 40 and "| agent_ftp_sag |" in proc.stdout
