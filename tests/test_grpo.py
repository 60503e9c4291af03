"""grpo and kepo: the policy loss against a float64 reference written out here, the group filter on
scripted rewards, KEPO's hint insertion and gate on scripted rollouts, exact resume between steps
that reuse one batch of rollouts, a short run that raises the reward, and the CLI."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import lm_method, tiny_overrides
from safetensors.torch import load_file

from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.data.collate import IGNORE, Encoded, collate, encode_prompt
from retort.lm.methods import METHODS
from retort.lm.methods.groups import completion_logps
from retort.lm.methods.kepo import first_part
from retort.lm.models import load_model
from retort.lm.rollout.generate import Completion
from retort.lm.tasks.base import Task
from retort.losses.policy import clipped_surrogate, group_advantages, k3_kl
from retort.train import train

G = 4



def _method(tmp_path, name, *, teacher=False, **cfg):
    return lm_method(tmp_path, name, teacher=teacher, **{"num_generations": G, **cfg})


def _script(method, monkeypatch, completions, rewards):
    """The student's samples and the verifier's rewards, in order, for the next batch."""
    tok = method.ctx.tokenizer
    queue = list(completions)

    def sample(model, prompts, seed, n):
        out = []
        for _ in prompts:
            group = []
            for _ in range(n):
                text, stop = queue.pop(0)
                group.append(Completion(text, tok(text, add_special_tokens=False)["input_ids"], "stop" if stop else "length"))
            out.append(group)
        return out

    scores = list(rewards)
    monkeypatch.setattr(method, "sample", sample)
    monkeypatch.setattr(method, "reward", lambda text, item: scores.pop(0))


# three groups: partial credit; solved by every sample (filtered); one truncated sample (masked)
COMPLETIONS = [("12", True), ("7x", True), ("abc", True), ("9", True),
               ("1", True), ("22", True), ("333", True), ("4", True),
               ("x", True), ("yy5", True), ("zzzz", False), ("q", True)]
REWARDS = [1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def _reference(student, ref_model, batch, items, cfg, tok, old_shift):
    """The GRPO objective in float64, each sequence alone: advantages from the rewards by hand, the
    clipped ratio against old log-probs shifted by `old_shift`, k3 KL, filter, masks, averaging."""
    eps_lo, eps_hi, beta, T = cfg.epsilon, cfg.epsilon_high, cfg.beta, cfg.temperature
    total, kept_tokens, kept_seqs = 0.0, 0, 0
    for gi in range(len(items)):
        rs = REWARDS[gi * G:(gi + 1) * G]
        if cfg.filter_groups and len(set(rs)) == 1:
            continue
        mean, std = statistics.mean(rs), statistics.stdev(rs)
        for j in range(G):
            i = gi * G + j
            text, stop = COMPLETIONS[i]
            if cfg.mask_truncated_completions and not stop:
                continue
            a = (rs[j] - mean) / ((std + 1e-4) if cfg.scale_rewards == "group" else 1.0)
            prompt = items[gi].input_ids[:items[gi].prompt_len]
            comp = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if stop else [])
            ids = torch.tensor([prompt + comp])
            lps = torch.log_softmax(student(ids).logits[0].double() / T, -1)
            with torch.no_grad():
                lpr = torch.log_softmax(ref_model(input_ids=ids).logits[0].double() / T, -1)
            seq = 0.0
            for t, y in enumerate(comp):
                lp = lps[len(prompt) + t - 1, y]
                old = lp.detach() + old_shift[i][t]
                ratio = torch.exp(lp - old)
                term = -torch.minimum(ratio * a, ratio.clamp(1 - eps_lo, 1 + eps_hi) * a)
                if beta:
                    d = lpr[len(prompt) + t - 1, y] - lp
                    term = term + beta * (torch.exp(d) - d - 1)
                seq = seq + term
            kept_tokens += len(comp)
            kept_seqs += 1
            total = total + (seq / len(comp) if cfg.loss_type == "grpo" else seq)
    return total / (kept_tokens if cfg.loss_type == "dapo" else kept_seqs)


@pytest.mark.parametrize("cfg", [
    {},
    {"loss_type": "grpo", "beta": 0.3, "epsilon_high": 0.28},
    {"scale_rewards": "none", "mask_truncated_completions": False, "filter_groups": False, "beta": 0.1},
])
def test_grpo_loss_and_gradient_match_the_objective_in_float64(tmp_path, monkeypatch, cfg):
    method, student, tok = _method(tmp_path, "grpo", **cfg)
    with torch.no_grad():  # the student moves away from the frozen reference (its starting copy)
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    items = method.examples()[:3]
    _script(method, monkeypatch, COMPLETIONS, REWARDS)
    batch = method.group_batch(items, chunk=0, seed=0)
    # pi_old away from pi: ratios on both sides of the clip range (as after an earlier update)
    sel = batch["labels"][:, 1:] != IGNORE
    g = torch.Generator().manual_seed(3)
    shift = [(torch.rand(int(sel[i].sum()), generator=g) - 0.5).tolist() for i in range(sel.shape[0])]
    with torch.no_grad():
        now = completion_logps(student, batch, method.cfg.temperature)
    batch["old_logps"][sel] = now + torch.tensor([s for row in shift for s in row])
    out = method.loss(student, batch)
    assert out.count == method.count(batch) > 0
    (out.loss / out.count).backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    want = _reference(student, method.reference(), batch, items, method.cfg, tok, shift)
    want.backward()
    assert out.loss.item() / out.count == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
    for a, p in zip(got, student.parameters()):
        torch.testing.assert_close(a, p.grad.float(), rtol=1e-4, atol=1e-6)
    assert 0 < out.metrics["clip_fraction"] < 1


def test_completion_logps_chunked_equals_whole_with_its_gradient(tmp_path, monkeypatch):
    method, student, _ = _method(tmp_path, "grpo")
    _script(method, monkeypatch, COMPLETIONS, REWARDS)
    batch = method.group_batch(method.examples()[:3], chunk=0, seed=0)
    grads = []
    for chunk in (None, 5):
        lp, ent = completion_logps(student, batch, 0.7, entropy=True, chunk=chunk)
        (lp * torch.arange(lp.numel())).sum().backward()
        grads.append(([p.grad.clone() for p in student.parameters()], lp.detach(), ent))
        student.zero_grad()
    (g1, lp1, e1), (g2, lp2, e2) = grads
    assert lp1.numel() > 5
    torch.testing.assert_close(lp1, lp2)
    torch.testing.assert_close(e1, e2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_policy_pieces_on_hand_numbers():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0]), 2, "group")
    assert adv[:2].tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4)])
    assert adv[2:].tolist() == [0.0] * 4
    assert group_advantages(torch.tensor([1.0, 0.0]), 2, "none").tolist() == [0.5, -0.5]
    loss, low, high = clipped_surrogate(torch.log(torch.tensor([1.5, 0.5, 1.0])), torch.zeros(3),
                                        torch.tensor([1.0, -1.0, 2.0]), epsilon_low=0.2, epsilon_high=0.28)
    assert loss.tolist() == pytest.approx([-1.28, 0.8, -2.0])
    assert high.tolist() == [True, False, False] and low.tolist() == [False, True, False]
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-2.0])).item() == pytest.approx(math.exp(-1) + 1 - 1)


def test_groups_solved_by_all_or_none_are_filtered_and_counted(tmp_path, monkeypatch):
    method, student, _ = _method(tmp_path, "grpo", mask_truncated_completions=False)
    items = method.examples()[:3]
    comps = [("1", True)] * 12
    _script(method, monkeypatch, comps, [1.0] * 4 + [0.0] * 4 + [0.0, 0.5, 0.0, 0.0])
    batch = method.group_batch(items, chunk=0, seed=0)
    s = batch["stats"]
    assert (s["solved_all"], s["solved_none"], s["groups_kept"]) == (pytest.approx(1 / 3),) * 3
    kept_rows = batch["pg_mask"].any(1).tolist()
    assert kept_rows == [False] * 8 + [True] * 4
    assert method.count(batch) == 4 * 2  # the kept group's tokens: "1" + EOS each
    # every group flat: nothing trained, a zero loss and count, no NaN
    _script(method, monkeypatch, comps, [0.0] * 12)
    flat = method.group_batch(items, chunk=1, seed=0)
    out = method.loss(student, flat)
    assert out.count == 0 and out.loss.item() == 0.0 and flat["stats"]["solved_none"] == 1.0
    # unfiltered, the flat groups count (their advantage is 0)
    off, _, _ = _method(tmp_path / "b", "grpo", filter_groups=False)
    _script(off, monkeypatch, comps, [0.0] * 12)
    assert off.count(off.group_batch(items, chunk=1, seed=0)) == 24


def test_batch_size_must_split_into_groups(tmp_path):
    with pytest.raises(ConfigError, match="multiple of method_args.num_generations=3"):
        _method(tmp_path, "grpo", num_generations=3)


@pytest.mark.parametrize("context", ["unhinted", "hinted"])
def test_kepo_inserts_a_rewarded_hinted_sample_and_distils_on_gated_ones(tmp_path, monkeypatch, context):
    method, student, tok = _method(tmp_path, "kepo", teacher=True, hints="solution", hint_tries=3,
                                   hint_context=context, lambda_kd=0.7)
    items = method.examples()[:2]
    calls = []

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    def sample(model, prompts, seed, n):
        calls.append(prompts)
        r = len(calls)

        def group(i):
            if r == 1 and i == 1:
                return ["no", "no", "ok7", "no"]  # the student's own round: group 1 solves once
            if r == 3:
                return ["ok7", "no", "no", "no"]  # the second hinted round: group 0's hint works
            return ["no"] * n
        return [[Completion(t, ids(t), "stop") for t in group(i)] for i in range(len(prompts))]

    monkeypatch.setattr(method, "sample", sample)
    monkeypatch.setattr(method, "reward", lambda text, item: 1.0 if text == "ok7" else 0.0)
    batch_items = [items[0], items[1]]
    batch = method.group_batch(batch_items, chunk=0, seed=0)
    s = batch["stats"]
    assert s["zero_groups_before"] == 0.5 and s["zero_groups_after"] == 0.0 and s["hint_rounds"] == 2.0
    assert len(calls) == 3 and len(calls[1]) == len(calls[2]) == 1
    assert all("Hint:" in tok.decode(p) for p in calls[1] + calls[2]) and "Hint:" not in tok.decode(calls[0][0])
    hint = first_part(items[0].solution, 0.5)
    assert method._hints == {str(items[0].prompt): hint}
    plain = encode_prompt(tok, items[0].prompt)
    hinted = calls[1][0]
    comp = ids("ok7") + [tok.eos_token_id]
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    sel = batch["labels"][:, 1:] != IGNORE
    if context == "unhinted":
        assert row == plain + comp  # trained under the prompt alone ...
        hb = collate([Encoded(hinted + comp, [IGNORE] * len(hinted) + comp)], tok.pad_token_id)
        with torch.no_grad():
            behaviour = completion_logps(student, hb, 1.0)
        # ... with pi_old its log-probs under the hinted context: a ratio != 1, clipped
        torch.testing.assert_close(batch["old_logps"][0][sel[0]], behaviour)
    else:
        assert "Hint:" in tok.decode(row) and row[-len(comp):] == comp
        assert torch.isnan(batch["old_logps"][0][sel[0]]).all()
    assert torch.isnan(batch["old_logps"][1:][sel[1:]]).all()  # the student's own samples: on-policy
    assert batch["gate"].tolist() == [True, False, False, False, False, False, True, False]

    # the gated term: lambda_kd * the reverse KL to the teacher on exactly the gated tokens
    with_kd = method.loss(student, batch)
    method.cfg.lambda_kd = 0.0
    without = method.loss(student, batch)
    method.cfg.lambda_kd = 0.7
    teacher = method.run_teacher.open(student)
    want = 0.0
    for i in (0, 6):
        ids = batch["input_ids"][i:i + 1]
        att = batch["attention_mask"][i:i + 1]
        ls = torch.log_softmax(student(input_ids=ids, attention_mask=att).logits[0].double(), -1)
        lt = torch.log_softmax(teacher(input_ids=ids, attention_mask=att).logits[0].double(), -1)
        for t in sel[i].nonzero()[:, 0].tolist():
            want += float((ls[t].exp() * (ls[t] - lt[t])).sum().detach())
    assert with_kd.loss.item() - without.loss.item() == pytest.approx(0.7 * want, rel=1e-4)
    assert with_kd.count == int((batch["pg_mask"] | (sel & batch["gate"][:, None])).sum())


def test_kepo_hint_is_the_first_part_and_asked_of_the_teacher_once(tmp_path, monkeypatch):
    assert first_part("a\nb\nc\nd", 0.5) == "a\nb" and first_part("abcdef", 0.5) == "abc"
    method, student, _ = _method(tmp_path, "kepo", teacher=True, hints="teacher", hint_share=1.0)
    teacher = method.run_teacher.open(student)
    asked = []
    monkeypatch.setattr(teacher, "generate", lambda prompts, **kw: asked.append(prompts) or
                        [[Completion(f"{len(p)}\nA: 7", [], "stop")] for p in prompts])
    item, other = method.examples()[:2]
    want = [f"{len(item.prompt)}\nA: 7", f"{len(other.prompt)}\nA: 7"]
    assert method.hints_for([item, other, item]) == [want[0], want[1], want[0]]
    assert method.hint(item) == want[0] and method.hint(other) == want[1]
    assert asked == [[item.prompt, other.prompt]]  # one call for both prompts, then the cache
    assert method.state_dict()["hints"] == {str(item.prompt): want[0], str(other.prompt): want[1]}
    assert method.teacher_needs() == ({"hidden", "generate"}, {"score", "generate"})


def _digits(self, text, reference, question=None):
    """A dense scripted reward (partial credit): the share of the completion's characters that are digits."""
    return sum(ch.isdigit() for ch in text) / max(1, len(text))


def _train(tmp_path, name, steps, **extra):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / name, steps=steps, **{
        "method": "grpo", "seed": 1, "train.lr": 0.05, "train.batch_size": 8, "train.warmup_steps": 0,
        "method_args.num_generations": G, "method_args.max_new_tokens": 8,
        "method_args.mask_truncated_completions": False, **extra}))
    train(run)
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return rows, load_file(tmp_path / name / "model" / "model.safetensors")


def test_kill_then_resume_between_steps_that_reuse_rollouts_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(Task, "reward", _digits)
    extra = {"method_args.num_iterations": 2, "train.save_every": 3}
    ref_rows, ref_w = _train(tmp_path, "ref", 6, **extra)
    start, _ = load_model(ModelConfig(name="preset:nano"), seed=1)
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in ref_w.items())  # it trained
    cls = METHODS["grpo"]
    real = cls.on_step

    def dies(self, step):
        if step == 5:
            raise KeyboardInterrupt("killed")
        real(self, step)

    monkeypatch.setattr(cls, "on_step", dies)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "cut", 6, **extra)
    assert (tmp_path / "cut" / "ckpt" / "step-0000003" / "method" / "state.safetensors").is_file()  # mid-cycle
    monkeypatch.setattr(cls, "on_step", real)
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "cut", steps=6, **{
        "method": "grpo", "seed": 1, "train.lr": 0.05, "train.batch_size": 8, "train.warmup_steps": 0,
        "method_args.num_generations": G, "method_args.max_new_tokens": 8,
        "method_args.mask_truncated_completions": False, **extra}))
    train(run, resume=True)
    cut_w = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(ref_w[k], cut_w[k]) for k in ref_w)
    cut_rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["loss"] for r in cut_rows] == [r["loss"] for r in ref_rows]


def test_grpo_raises_a_scripted_reward(tmp_path, monkeypatch):
    monkeypatch.setattr(Task, "reward", _digits)
    rows, _ = _train(tmp_path, "up", 12)
    first, last = statistics.mean(r["reward"] for r in rows[:3]), statistics.mean(r["reward"] for r in rows[-3:])
    assert last > first + 0.05, (first, last)
    assert all(k in rows[0] for k in ("reward_std", "solved_all", "solved_none", "completion_tokens", "entropy",
                                       "clip_fraction"))


def test_grpo_from_the_cli_and_both_in_retort_methods(tmp_path):
    env = {"PYTHONPATH": str(Path(__file__).parent.parent / "src"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RETORT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin"}
    code = "import sys; from retort.cli import main; rc = main(['train', *sys.argv[1:]]); main(['methods']); sys.exit(rc)"
    out = tmp_path / "cli"
    args = tiny_overrides(out, steps=2, **{"method": "grpo", "method_args.num_generations": G,
                                           "method_args.max_new_tokens": 8})
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(rows) == 2 and all("solved_none" in r and "entropy" in r for r in rows)
    assert (out / "model" / "model.safetensors").is_file()
    assert "grpo" in proc.stdout and "kepo" in proc.stdout


def test_kepo_hints_from_a_trace_set_are_the_prompts_correct_trace(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retort.lm.config import TracesRun
    from retort.lm.data.traces import read_traces, sha256_file
    from retort.lm.traces import run_traces

    out = tmp_path / "traces"
    run_traces(load_config(TracesRun, None, [f"out={out}", "teacher.name=preset:nano", "n_prompts=4",
                                             "sampling.n=2", "sampling.max_new_tokens=8"]))
    manifest = json.loads((out / "manifest.json").read_text())
    for info in manifest["shards"].values():  # the verifier's verdicts scripted: the second sample is correct
        t = pq.read_table(out / info["file"])
        flags = [i == 1 for i in t["sample_idx"].to_pylist()]
        pq.write_table(t.set_column(t.schema.get_field_index("correct"), "correct", pa.array(flags)), out / info["file"])
        info["sha256"] = sha256_file(out / info["file"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    cols = read_traces(out, columns=["prompt", "completion", "sample_idx"]).to_pydict()
    want = {p: c for p, c, i in zip(cols["prompt"], cols["completion"], cols["sample_idx"]) if i == 1}
    method, _, _ = _method(tmp_path, "kepo", hints="traces", hint_traces=str(out), hint_share=1.0, lambda_kd=0.0)
    assert method.teacher_needs() == ()
    items = [x for x in method.examples() if str(x.prompt) in want]
    assert items
    for x in items:
        assert method.hint(x) == first_part(want[str(x.prompt)], 1.0)
    with pytest.raises(ConfigError, match="hint_traces=DIR"):
        _method(tmp_path / "b", "kepo", hints="traces")
