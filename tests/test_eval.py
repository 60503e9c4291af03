import itertools

import pytest
import torch

from retort.lm.config import EvalConfig, ModelConfig
from retort.lm.eval import evaluate, majority, pass_at_k
from retort.lm.models import load_model
from retort.lm.rollout import generate
from retort.lm.tasks import TASKS

def brute_pass_at_k(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)

@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 6), (7, 4, 2), (8, 8, 3)])
def test_pass_at_k_is_unbiased(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)

def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)

def test_majority():
    assert majority(["1", "2", "2", None]) == "2"
    assert majority(["3", "1", "1", "3"]) == "3"  # tie -> first seen
    assert majority([None, None]) is None

def test_left_padded_batches_generate_like_single_prompts():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)
    prompts = ["Q:1\n", "Q:2+3*4-5+6\n", "Q:a=1,b=a+2;b?\n", "Q:7*7\n"]
    batched = generate(model, tok, prompts, max_new_tokens=10, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=10, batch_size=1)[0] for p in prompts]
    assert [b[0].token_ids for b in batched] == [s[0].token_ids for s in single]

def test_sampling_is_seeded_and_returns_k_samples():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    a = generate(model, tok, ["Q:1\n", "Q:2\n"], max_new_tokens=8, temperature=1.0, num_samples=3, seed=5)
    b = generate(model, tok, ["Q:1\n", "Q:2\n"], max_new_tokens=8, temperature=1.0, num_samples=3, seed=5)
    assert [len(x) for x in a] == [3, 3]
    assert [[c.token_ids for c in x] for x in a] == [[c.token_ids for c in x] for x in b]

def test_evaluate_reports_all_metrics():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    res = evaluate(model, tok, TASKS["modchain"](), EvalConfig(n=6, k=3, max_new_tokens=8, batch_size=6))
    for key in ("accuracy", "pass@3", "maj@3", "pass@1_sampled", "mean_tokens", "by_difficulty", "samples"):
        assert key in res
    assert 0 <= res["accuracy"] <= 1 and res["n"] == 6
    assert res["pass@3"] >= res["pass@1_sampled"]


def test_mean_entropy_is_the_entropy_of_the_next_token_distribution_over_greedy_answers():
    from retort.lm.data.collate import encode_prompt

    model, tok = load_model(ModelConfig(name="preset:nano"), seed=4)
    task = TASKS["modchain"]()
    cfg = EvalConfig(n=3, max_new_tokens=5, batch_size=3)
    res = evaluate(model, tok, task, cfg, entropy=True)
    want = []
    for ex in task.examples(cfg.split, cfg.n, cfg.seed):
        p = encode_prompt(tok, ex.prompt)
        c = generate(model, tok, [ex.prompt], max_new_tokens=5)[0][0]
        ids = c.token_ids + ([tok.eos_token_id] if c.finish_reason == "stop" else [])
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + ids])).logits[0, len(p) - 1:-1].double(), -1)
        want += (-(lp.exp() * lp).sum(-1)).tolist()
    assert res["mean_entropy"] == pytest.approx(sum(want) / len(want), abs=1e-5)
    assert "mean_entropy" not in evaluate(model, tok, task, cfg)


def test_sampling_leaves_the_global_rng_alone():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    before = torch.random.get_rng_state()
    generate(model, tok, ["Q:1\n"], max_new_tokens=4, temperature=1.0, num_samples=2, seed=3)
    assert torch.equal(before, torch.random.get_rng_state())


def test_evaluate_reports_param_count():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    res = evaluate(model, tok, TASKS["modchain"](), EvalConfig(n=2, max_new_tokens=4, batch_size=2))
    assert res["params"] == sum(p.numel() for p in model.parameters()) > 0


def _render(renderable, width=80):
    import io

    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_results_table_fits_80_columns_and_shows_n_and_split():
    from retort.lm.eval import results_table

    base = {"task": "modchain", "split": "test", "n": 200, "accuracy": 0.5, "mean_tokens": 12.25,
            "truncated": 0.0, "pass@8": 0.9, "maj@8": 0.6, "pass@1_sampled": 0.45,
            "temperature": 0.8, "k": 8, "no_answer": 12, "no_answer_rate": 0.06}
    rows = [("builtin:teacher", {**base, "by_difficulty": {"None": 0.5}}),
            ("runs/sft_on_teacher_traces/model", {**base, "n": 37, "by_difficulty": {"None": 0.25}})]
    text = _render(results_table(rows))
    for header in ("model", "split", "n", "accuracy", "pass@8", "maj@8", "pass@1_sampled", "no_ans", "tokens"):
        assert header in text, (header, text)
    assert "0.060" in text  # the share without an answer
    assert "None" not in text and "d=" not in text
    assert "200" in text and "37" in text and "test" in text
    assert max(len(line) for line in text.splitlines()) <= 80

    # A task with difficulties gets them in a second table, numerically sorted.
    rows = [(name, {**r, "by_difficulty": {"10": 0.1, "2": 0.9, "3": 0.5}}) for name, r in rows]
    text = _render(results_table(rows))
    assert "pass@1_sampled" in text and "None" not in text
    assert text.index("d=2") < text.index("d=3") < text.index("d=10")
    assert text.index("pass@1_sampled") < text.index("d=2")


@pytest.mark.parametrize("answer, said", [("1/2", "the answer is \\boxed{1/2}"), ("\\sqrt{2}", "so \\boxed{\\sqrt{2}}")])
def test_majority_vote_is_verified_as_the_tasks_verifier_reads_it(tmp_path, monkeypatch, answer, said):
    """maj@k checks the voted answer through the task: under the `math` verifier a vote such as
    1/2 or \\sqrt{2} is right (it was re-checked as "A:1/2", which math-verify cannot parse)."""
    import json

    import retort.lm.eval.run as run_mod
    from retort.lm.config import EvalConfig
    from retort.lm.rollout.generate import Completion
    from retort.lm.tasks.files import FileTask

    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "q", "answer": answer}) + "\n")
    task = FileTask(str(path), "math", 0.0)

    def fake_generate(model, tok, prompts, *, num_samples=1, **kw):
        return [[Completion(said, [1], "stop") for _ in range(num_samples)] for _ in prompts]

    monkeypatch.setattr(run_mod, "generate", fake_generate)
    model = torch.nn.Linear(1, 1)
    result = run_mod.evaluate(model, None, task, EvalConfig(n=1, k=3))
    assert result["accuracy"] == 1.0 and result["pass@3"] == 1.0 and result["maj@3"] == 1.0


def test_length_difficulty_correlation_is_pearsons_and_none_when_constant():
    from retort.lm.eval.run import _corr

    assert _corr([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert _corr([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert _corr([1, 2, 3, None], [1, 1, 1, 5]) is None  # constant lengths; the None difficulty left out
    assert _corr([2], [3]) is None


def test_eval_stop_strings_end_answers_and_tokens_per_s_is_reported(tmp_path, capsys):
    import json

    from retort.cli import main

    model, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    cfg = dict(n=4, max_new_tokens=12, batch_size=4)
    free = evaluate(model, tok, TASKS["modchain"](), EvalConfig(**cfg))
    assert free["stop"] == [] and free["tokens_per_s"] > 0
    first = free["samples"][0]["completion"]
    assert len(first) > 3  # this untrained model rambles: something to stop
    stop = first[:2]
    stopped = evaluate(model, tok, TASKS["modchain"](), EvalConfig(**cfg, stop=[stop]))
    got = stopped["samples"][0]["completion"]
    assert stopped["stop"] == [stop] and first.startswith(got) and len(got) <= len(stop)
    assert stopped["mean_tokens"] < free["mean_tokens"]
    # through the command line: eval.stop=[...] in the dotted overrides, tok/s in the table and the JSON
    out = tmp_path / "eval.json"
    assert main(["eval", "-m", "nano=preset:nano", "--json", str(out), "eval.n=2", "eval.max_new_tokens=6",
                 'eval.stop=["\\n\\n", "Q:"]']) == 0
    assert "tok/s" in capsys.readouterr().err  # the table goes to stderr
    res = json.loads(out.read_text())["nano"]
    assert res["stop"] == ["\n\n", "Q:"] and res["tokens_per_s"] > 0
    assert res["model"] == "preset:nano" and "model_dir" not in res  # a name, not a directory
