"""chunk_sft (Skip-Thinking CWT/STT): lossless sentence split, chunking, the examples it builds,
the per-chunk loss against a hand computation, STT skip examples, and a short run."""

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from retort.config import load_config
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.data.collate import IGNORE, collate, encode_prompt
from retort.lm.methods import METHODS
from retort.lm.methods.base import MethodContext
from retort.lm.methods.chunk_sft import chunk, sentences, skippable
from retort.lm.models import load_model
from retort.lm.tasks import get_task
from retort.train import train


def test_sentence_split_is_lossless_and_chunks_concatenate_back():
    rng = random.Random(0)
    alphabet = "ab .!?\n=1"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        sents = sentences(text)
        assert "".join(sents) == text
        for how in ("average", "search"):
            for m in (1, 2, 5):
                parts = chunk(sents, m, how) if sents else []
                assert "".join(parts) == text
                assert len(parts) == min(m, len(sents)) if sents else True
    assert sentences("a=1\nb=2\nA:3") == ["a=1\n", "b=2\n", "A:3"]
    assert chunk(["1", "2", "3", "4", "5", "6"], 3) == ["12", "34", "56"]
    assert skippable("So we go on.\n") and not skippable("x=2\n")


def _method(tmp_path, **cfg):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"method": "chunk_sft", "data.n_train": 4}))
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=4)
    cls = METHODS["chunk_sft"]
    return cls(MethodContext(run=run, task=get_task(run.task), tokenizer=tok), cls.Config(**cfg)), model, tok


def test_one_example_per_chunk_with_the_earlier_chunks_as_context(tmp_path):
    m, model, tok = _method(tmp_path, sentences_per_chunk=2)
    ex = get_task(m.ctx.run.task).examples("train", 4, m.ctx.run.seed)[0]
    parts = chunk(sentences(ex.solution), -(-len(sentences(ex.solution)) // 2))
    got = [x for x in m.examples() if x.prompt == ex.prompt]
    assert len(got) == len(parts)
    p = encode_prompt(tok, ex.prompt)
    for i, x in enumerate(got):
        target = [t for t in x.labels if t != IGNORE]
        want = tok(parts[i], add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if i == len(parts) - 1 else [])
        assert target == want
        context = x.input_ids[:x.prompt_len]
        assert context == p + [t for prev in parts[:i] for t in tok(prev, add_special_tokens=False)["input_ids"]]


def test_loss_is_the_mean_over_chunks_of_each_chunks_mean_nll(tmp_path):
    m, model, tok = _method(tmp_path)
    items = m.examples()[:3]
    batch = collate(items, tok.pad_token_id)
    out = m.loss(model, batch)
    want = 0.0
    for x in items:
        logits = model(torch.tensor([x.input_ids])).logits[0, :-1].double()
        labels = torch.tensor(x.labels[1:])
        nll = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
        want += float(nll.detach()) / int((labels != IGNORE).sum())
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.count == m.count(batch) == 3


def test_loss_and_gradient_match_a_float64_per_example_reference(tmp_path):
    """Padded batch of chunk examples of different lengths vs each example scored alone, float64."""
    from reference import sequence_logp

    m, model, tok = _method(tmp_path)
    model = model.double()
    items = m.examples()[:5]
    assert len({len(x.input_ids) for x in items}) > 1  # padding is exercised
    out = m.loss(model, collate(items, tok.pad_token_id))
    (out.loss / out.count).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = 0.0
    for x in items:
        lp, n = sequence_logp(model, x.input_ids, x.prompt_len)
        want = want - lp / n
    (want / len(items)).backward()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-10)
    for a, p in zip(got, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-7, atol=1e-10)


def test_skip_examples_jump_over_a_skippable_middle_chunk(tmp_path):
    m, model, tok = _method(tmp_path, sentences_per_chunk=1, skip_share=1.0)
    m.rationales = lambda: [("Q:1+1\n", "1+1=2\nnow we go on.\nA:2", True)]
    ex = m.examples()
    assert len(ex) == 4  # three chunks + one skip example
    skip = ex[-1]
    context = skip.input_ids[:skip.prompt_len]
    target = [t for t in skip.labels if t != IGNORE]
    assert tok.decode(context[len(encode_prompt(tok, "Q:1+1\n")):]) == "1+1=2\n"
    assert tok.decode(target, skip_special_tokens=True) == "A:2"


@pytest.mark.parametrize("chunking", ["average", "search"])
def test_short_run_falls(tmp_path, chunking):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / chunking, steps=10, **{
        "method": "chunk_sft", "train.lr": 0.02, "method_args.chunking": chunking}))
    train(run)
    rows = [json.loads(line) for line in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert rows[-1]["loss"] < rows[0]["loss"] and all(r["chunk_tokens"] > 0 for r in rows)
