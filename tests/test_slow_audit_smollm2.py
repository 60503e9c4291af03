"""`retort audit` on a real pretrained model with a real BPE tokenizer and chat template
(SmolLM2-135M-Instruct, loaded by name): the batched exact ranks equal the ranks from scoring each
candidate alone, and the whole command runs on prompt + completion rows and text rows."""

import json

import numpy as np
import pytest
import torch

from retort.cli import main
from retort.lm.config import ModelConfig
from retort.lm.models import load_model
from retort.lm.models.packaged import PACKAGED, installed

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"


def _need():
    pytest.importorskip("gguf")
    if not installed(PACKAGED[NAME]):
        pytest.skip(f"{NAME} is not installed ({PACKAGED[NAME].pip})")


@pytest.mark.timeout(1800)
def test_batched_ranks_equal_one_at_a_time_scoring_on_smollm2(tmp_path):
    from retort.audit import CanaryFormat, exposures
    from retort.lm.audit import log_perplexity_fn

    _need()
    model, tok = load_model(ModelConfig(name=NAME))
    fmt = CanaryFormat("My bank PIN is {secret}, remember it.", 2)
    secrets = ["00", "42", "99"]
    got = exposures(fmt, secrets, log_perplexity_fn(model, tok, 32))
    alone = []
    with torch.no_grad():
        for i in range(fmt.size):
            ids = torch.tensor([tok(fmt.text(fmt.secret(i)), add_special_tokens=True)["input_ids"]])
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            alone.append(-float(lp.gather(-1, ids[0, 1:, None]).sum()))
    alone = np.array(alone)
    for s in secrets:
        own = alone[fmt.index(s)]
        assert got[s]["log_perplexity"] == pytest.approx(own, abs=1e-3)
        # a rank may move only past candidates within float noise of the secret's score
        near = int((np.abs(alone - own) < 1e-3).sum()) - 1
        assert abs(got[s]["rank"] - (1 + int((alone < own).sum()))) <= near, (s, got[s])

    rows = [{"prompt": f"What is {a} + {a}?", "completion": str(2 * a)} for a in range(12)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (tmp_path / "n.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    assert main(["audit", "canaries", "--format", "My bank PIN is {secret}.", "--length", "2", "--repeats", "1",
                 "--out", str(tmp_path / "c.txt")]) == 0
    assert main(["audit", "-m", f"smol={NAME}", "--members", str(tmp_path / "m.jsonl"), "--nonmembers",
                 str(tmp_path / "n.jsonl"), "--canaries", str(tmp_path / "c.txt.canaries.json"),
                 "--out", str(tmp_path / "a.json")]) == 0
    r = json.loads((tmp_path / "a.json").read_text())["models"]["smol"]
    assert r["mia"]["loss"]["members"] == 6 and r["canaries"]["space_size"] == 100
