"""`retort audit` on language models: the exact rank of a secret under a model whose log-probs are
known, a tiny LM trained on a canary 20 times (near-maximal exposure) beside one never shown it
(exposure near chance), membership inference from a training run's own rows, and the refusals."""

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from retort.audit import read_manifest
from retort.cli import main
from retort.lm.audit import log_perplexity_fn
from retort.lm.models.presets import char_tokenizer


class Bigram(torch.nn.Module):
    """logits at position t = table[token t]: p(next | current) known exactly."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def _reference_log_perplexity(table: torch.Tensor, ids: list[int]) -> float:
    """-sum_t log softmax(table[ids[t]])[ids[t+1]], in float64 with plain Python."""
    t = table.double()
    total = 0.0
    for a, b in itertools.pairwise(ids):
        row = t[a].tolist()
        m = max(row)
        total -= row[b] - (m + math.log(sum(math.exp(v - m) for v in row)))
    return total


def test_exposure_rank_is_exact_under_a_model_of_known_log_probs():
    from retort.audit import CanaryFormat, exposures

    tok = char_tokenizer()
    table = torch.randn(len(tok), len(tok), generator=torch.Generator().manual_seed(0)) * 3
    model = Bigram(table)
    fmt = CanaryFormat("pin {secret}!", 3)
    ref = np.array([_reference_log_perplexity(table, tok(fmt.text(fmt.secret(i)))["input_ids"])
                    for i in range(fmt.size)])
    secrets = [fmt.secret(int(i)) for i in np.argsort(ref)[[0, 6, 499, 999]]]
    got = exposures(fmt, secrets, log_perplexity_fn(model, tok, 128))
    for s, want_rank in zip(secrets, [1, 7, 500, 1000]):
        assert got[s]["rank"] == want_rank and got[s]["method"] == "exact"
        assert got[s]["exposure"] == pytest.approx(math.log2(1000) - math.log2(want_rank))
        assert got[s]["log_perplexity"] == pytest.approx(ref[fmt.index(s)], abs=1e-6)
    # a model built to prefer one secret's digits ranks it first: exposure log2 |space|
    favoured = torch.zeros_like(table)
    for a, b in zip("pin 4", "in 48"):
        favoured[tok.convert_tokens_to_ids(a), tok.convert_tokens_to_ids(b)] = 5.0
    favoured[tok.convert_tokens_to_ids("8"), tok.convert_tokens_to_ids("1")] = 5.0
    top = exposures(fmt, ["481"], log_perplexity_fn(Bigram(favoured), tok, 256))["481"]
    assert top["rank"] == 1 and top["exposure"] == pytest.approx(math.log2(1000))


FILLER = ["the cat ate {} fish.", "a dog saw {} birds.", "we had {} cups of tea.", "she read {} books."]


def _train(model, tok, lines: list[str], steps: int, seed: int) -> None:
    from retort.lm.audit import text_row
    from retort.lm.data.collate import collate

    torch.manual_seed(seed)
    rows = [text_row(tok, t) for t in lines]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        batch = collate([rows[i] for i in rng.choice(len(rows), 16)], tok.pad_token_id)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and a busy machine's cores are not all free)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_canary_seen_20_times_is_exposed_and_an_unseen_one_is_not(tmp_path, capsys, one_thread):
    from retort.lm.config import ModelConfig
    from retort.lm.models import load_model, save_model

    rng = np.random.default_rng(0)
    (tmp_path / "filler.txt").write_text("".join(FILLER[i % 4].format(rng.integers(10, 99)) + "\n" for i in range(80)))
    held = [FILLER[i % 4].format(rng.integers(10, 99)) for i in range(40)]
    (tmp_path / "held.txt").write_text("\n".join(held) + "\n")
    corpus = tmp_path / "private.txt"
    assert main(["audit", "canaries", "--format", "my pin is {secret}.", "--length", "3", "--repeats", "20",
                 "--controls", "1", "--into", str(tmp_path / "filler.txt"), "--out", str(corpus)]) == 0
    manifest = str(corpus) + ".canaries.json"
    _, canaries = read_manifest(manifest)
    inserted = next(c["secret"] for c in canaries if c["repeats"] == 20)
    lines = corpus.read_text().splitlines()
    clean = [x for x in lines if not x.startswith("my pin")]
    for name, data in (("seen", lines), ("unseen", clean)):
        model, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
        _train(model, tok, data, steps=100, seed=0)
        save_model(model, tok, tmp_path / name)
    out = tmp_path / "audit.json"
    assert main(["audit", "-m", f"seen={tmp_path / 'seen'}", "-m", f"unseen={tmp_path / 'unseen'}",
                 "--canaries", manifest, "--members", str(corpus), "--nonmembers", str(tmp_path / "held.txt"),
                 "--out", str(out), "model.chat_template=off"]) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "retort-audit"
    seen, unseen = result["models"]["seen"], result["models"]["unseen"]
    by = {r["secret"]: r for r in seen["canaries"]["results"]}
    assert seen["canaries"]["max_exposure"] == pytest.approx(math.log2(1000))
    assert by[inserted]["exposure"] > 0.9 * math.log2(1000), by[inserted]
    u = {r["secret"]: r for r in unseen["canaries"]["results"]}
    assert u[inserted]["exposure"] < 5.0, u[inserted]  # chance: 1.44 bits expected, > 5 bits has p = 1/32
    for r in (seen, unseen):
        assert r["mia"]["loss"]["members"] > 80 and r["mia"]["loss"]["nonmembers"] == 40
        assert 0.0 <= r["mia"]["loss"]["auc"] <= 1.0 and r["epsilon"] is None
    table = capsys.readouterr().err
    assert "retort audit" in table and "MIA" in table and "unseen" in table


def test_a_training_run_is_audited_on_its_own_rows_and_the_result_lands_in_it(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides(run, steps=4)]) == 0
    before = {p.name for p in run.iterdir()}
    assert main(["audit", "-m", str(run), "--n", "32", "--reference", "preset:nano"]) == 0
    result = json.loads((run / "audit.json").read_text())["models"][str(run)]
    assert {p.name for p in run.iterdir()} - before == {"audit.json"}
    mia = result["mia"]
    assert mia["members"].startswith("training rows (data.source=solutions") and "test split" in mia["nonmembers"]
    assert mia["loss"]["members"] == 32 and mia["loss"]["nonmembers"] == 32
    assert mia["reference"] is not None and mia["reference_model"] == "preset:nano"
    assert result["run_dir"] == str(run) and result["model"] == str(run / "model")


def test_canaries_in_a_file_task_are_scored_after_the_prompt_the_run_trained_them_with(tmp_path, one_thread):
    rng = np.random.default_rng(1)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"prompt": f"Write note {i}.", "answer": "-",
                                         "solution": FILLER[i % 4].format(rng.integers(10, 99))}) + "\n"
                             for i in range(60)))
    corpus = tmp_path / "private.jsonl"
    assert main(["audit", "canaries", "--format", "account {secret}", "--length", "3", "--repeats", "20",
                 "--into", str(notes), "--out", str(corpus), "--field", "solution",
                 "--row", '{"prompt": "Write the account note.", "answer": "-"}']) == 0
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides(run, steps=80, **{"train.batch_size": 16, "train.lr": 3e-3}),
                 f"task.name={corpus}", "task.test_fraction=0.2", "data.n_train=1000", "eval.n=4"]) == 0
    assert main(["audit", "-m", str(run), "--canaries", str(corpus) + ".canaries.json"]) == 0
    result = json.loads((run / "audit.json").read_text())["models"][str(run)]
    can = result["canaries"]
    assert can["prompt"] == "Write the account note." and can["method"] == "exact"
    exposure = {r["repeats"]: r["exposure"] for r in can["results"]}
    assert exposure[20] > 0.8 * can["max_exposure"] > exposure[0], exposure
    # members: the file's train split as the run encoded it (canary rows among them), non-members its test split
    assert result["mia"]["loss"]["members"] > 40 and result["mia"]["loss"]["nonmembers"] > 0


def test_bad_audit_input_gets_one_clear_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides(run, steps=2)]) == 0
    (tmp_path / "m.txt").write_text("a\n")
    (tmp_path / "empty.txt").write_text("\n")
    cases = [
        (["-m", str(run / "model")], "pass --members FILE --nonmembers FILE"),
        (["-m", str(run), "--members", str(tmp_path / "m.txt")], "--members and --nonmembers go together"),
        (["-m", str(run), "--members", str(tmp_path / "m.txt"), "--nonmembers", str(tmp_path / "empty.txt")],
         "empty.txt: no rows to score"),
        (["-m", str(run), "--canaries", str(tmp_path / "none.json")], "none.json: no such file"),
        (["-m", str(run), "--reference", "teacher", "--members", str(tmp_path / "m.txt"), "--nonmembers",
          str(tmp_path / "m.txt"), "--out", str(tmp_path)], "is a directory"),
    ]
    for args, msg in cases:
        assert main(["audit", *args]) == 2, args
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (args, err)
    assert not (run / "audit.json").exists()
    # a file task trained whole (task.test_fraction=0) has no held-out rows to compare with
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) + "\n" for i in range(20)))
    whole = tmp_path / "whole"
    assert main(["train", *tiny_overrides(whole, steps=1), f"task.name={rows}", "task.test_fraction=0",
                 "data.source=answers", "eval.n=2"]) == 0
    assert main(["audit", "-m", str(whole)]) == 2
    assert "no held-out rows: task.test_fraction=0" in capsys.readouterr().err
