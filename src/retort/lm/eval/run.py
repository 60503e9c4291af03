"""`retort eval`: greedy pass@1, sampled pass@k and maj@k, completion length, accuracy by difficulty,
how many answers had no answer the task could read (`no_answer`: a format failure, counted
apart from wrong answers), the greedy decoding speed (`tokens_per_s`, `wall_s`), the compute used
(`compute_used`: decoder layers per generated token), and for answers in MinD's turn format their
turns and tokens before the first intermediate answer (`turn_metrics`). `eval.stop`: stop strings."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from statistics import mean

from ..data.turns import CLOSE
from ..rollout.generate import generate
from .metrics import majority, pass_at_k

KEYED = re.compile(r"^(?:pass|maj)@(\d+)$")  # pass@K, maj@K; not pass@1_sampled


def teacher_answers(model, tok, task, cfg, *, progress=None) -> list:
    """The reference model's greedy completions of the evaluation prompts (computed once, then
    handed to `evaluate(..., reference=...)` for every other model)."""
    prompts = [e.prompt for e in task.examples(cfg.split, cfg.n, cfg.seed)]
    return [g[0] for g in generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                                   batch_size=cfg.batch_size, stop=list(cfg.stop) or None, progress=progress)]


def load_reference(model_cfg, task, cfg, label: str, *, seed: int = 0, device=None) -> tuple:
    """A fidelity reference for `evaluate(..., reference=...)`: (label, the model `model_cfg` names
    in eval mode, its tokenizer, its greedy answers on the evaluation prompts)."""
    from ..models import load_model

    model, tok = load_model(model_cfg, seed=seed)
    return reference(label, (model if device is None else model.to(device)), tok, task, cfg)


def reference(label: str, model, tok, task, cfg) -> tuple:
    """The fidelity reference of a model already loaded (a run's own teacher): as `load_reference`."""
    model = model.eval()
    return label, model, tok, teacher_answers(model, tok, task, cfg)


def fidelity(model, tok, ref_model, ref_tok, ref_greedy: list, task, cfg, greedy: list) -> dict:
    """Agreement with a reference model (the teacher), beside accuracy ("Generalization vs
    Fidelity"): on the evaluation prompts,
    - `agree_answer`: the share of prompts where both give an answer and it is the same one;
    - on the reference's greedy answers, teacher-forced through both models (same vocabulary
      only): `agree_top1`, the share of positions where both models' most likely next token is
      the same, and `kl_ref_model`, the mean per-token KL(reference || model) in nats."""
    import torch

    from ..data.collate import encode_prompt

    prompts = [e.prompt for e in task.examples(cfg.split, cfg.n, cfg.seed)]
    a = [task.extract_answer(g.text, p) for g, p in zip(greedy, prompts)]
    b = [task.extract_answer(g.text, p) for g, p in zip(ref_greedy, prompts)]
    out = {"agree_answer": float(mean(x is not None and x == y for x, y in zip(a, b)))}
    if tok.get_vocab() != ref_tok.get_vocab():
        out["token_fidelity"] = "not computed: the two tokenizers differ"
        return out
    eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
    top1, kls = [], []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(prompts), cfg.batch_size):
            seqs, spans = [], []
            for p, g in zip(prompts[start:start + cfg.batch_size], ref_greedy[start:start + cfg.batch_size]):
                ids = encode_prompt(tok, p)
                c = g.token_ids + (eos if g.finish_reason == "stop" else [])
                seqs.append(ids + c)
                spans.append((len(ids) - 1, len(ids) - 1 + len(c)))
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), tok.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, x in enumerate(seqs):
                ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
            ls = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            lt = ref_model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            v = min(ls.shape[-1], lt.shape[-1], len(tok))  # shared columns (padded embeddings differ)
            for i, (lo, hi) in enumerate(spans):
                ps = torch.log_softmax(ls[i, lo:hi, :v], -1)
                pt = torch.log_softmax(lt[i, lo:hi, :v], -1)
                top1 += (ps.argmax(-1) == pt.argmax(-1)).tolist()
                kls += (pt.exp() * (pt - ps)).sum(-1).tolist()
    out.update(agree_top1=float(mean(top1)) if top1 else None, kl_ref_model=float(mean(kls)) if kls else None)
    return out


def _corr(xs, ys):
    """Pearson correlation, None when either side is constant or missing."""
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None]
    if len(pairs) < 2:
        return None
    mx, my = mean(x for x, _ in pairs), mean(y for _, y in pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return float(sxy / (sxx * syy) ** 0.5) if sxx > 0 and syy > 0 else None


def turn_metrics(tok, texts: list[str]) -> dict:
    """MinD's metrics over greedy answers (`retort.lm.data.turns.turn_stats`): the mean turns of the
    answers in the turn format, their share (`turn_format`), and the mean tokens before the first
    intermediate answer (`first_answer_tokens`, every answer; the whole answer when it has none)."""
    from ..data.turns import turn_stats

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    stats = [turn_stats(t, count) for t in texts]
    ok = [s for s in stats if s["well_formed"]]
    return {"turns": float(mean(s["turns"] for s in ok)) if ok else 0.0,
            "turn_format": float(mean(s["well_formed"] for s in stats)),
            "first_answer_tokens": float(mean(s["first_answer_tokens"] for s in stats))}


def evaluate(model, tok, task, cfg, *, progress=None, n_samples_kept: int = 5, entropy: bool = False,
             reference=None) -> dict:
    """Evaluate on `cfg.n` prompts of `cfg.split`. Returns a JSON-ready dict. `entropy`: also the
    model's mean next-token entropy (nats, temperature 1) over the tokens of its greedy answers
    (EOS step included for answers that stopped) — how much a method narrowed the distribution."""
    agent = getattr(task, "agent", None)
    if agent is not None:  # answered by running the model as an agent (`eval.agent`; calc, or agent=code)
        from ..config import AgentConfig
        from .agent import evaluate_agent

        return evaluate_agent(model, tok, task, cfg, agent if isinstance(agent, AgentConfig) else AgentConfig(kind=agent),
                              progress=progress, n_samples_kept=n_samples_kept)
    examples = task.examples(cfg.split, cfg.n, cfg.seed)
    prompts = [e.prompt for e in examples]
    stop = list(getattr(cfg, "stop", None) or []) or None
    metered = hasattr(model, "compute_used")  # a model that counts its own compute (the System-1.5 student)
    if metered:
        model.reset_compute()
    t0 = time.perf_counter()
    greedy = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                      batch_size=cfg.batch_size, stop=stop, progress=progress)
    seconds = time.perf_counter() - t0
    if hasattr(task, "prepare"):  # answers that are programs: run them all, a few sandboxes at a time
        task.prepare([g[0].text for g in greedy])
    correct = [task.verify(g[0].text, e.answer, e.prompt) for g, e in zip(greedy, examples)]
    # no answer the task could read: the format failed, which is not the same as a wrong answer
    no_answer = [task.extract_answer(g[0].text, e.prompt) is None for g, e in zip(greedy, examples)]
    by_diff: dict = defaultdict(list)
    len_by_diff: dict = defaultdict(list)
    for ok, e, g in zip(correct, examples, greedy):
        by_diff[e.difficulty].append(ok)
        len_by_diff[e.difficulty].append(len(g[0].token_ids))
    result = {
        "task": task.name,
        "split": cfg.split,
        "n": len(examples),
        # The report's params column reads this; counted here so an eval JSON carries it too.
        "params": sum(p.numel() for p in model.parameters()),
        "accuracy": float(mean(correct)),
        "no_answer": int(sum(no_answer)),
        "no_answer_rate": float(mean(no_answer)),
        "answer_format": task.describe_format() if hasattr(task, "describe_format") else None,
        "mean_tokens": float(mean(len(g[0].token_ids) for g in greedy)),
        "truncated": float(mean(g[0].finish_reason == "length" for g in greedy)),
        # greedy decoding speed: completion tokens over the wall time of generating them (this machine,
        # this batch size; a comparison between models evaluated in the same command)
        "tokens_per_s": float(sum(len(g[0].token_ids) for g in greedy) / max(seconds, 1e-9)),
        "wall_s": round(seconds, 3),  # the greedy pass, this machine (compare models of one command)
        "stop": stop or [],
        "by_difficulty": {str(k): float(mean(v)) for k, v in sorted(by_diff.items(), key=lambda kv: str(kv[0]))},
        # answer length by difficulty, and their correlation (does the model spend more on harder problems?)
        "tokens_by_difficulty": {str(k): float(mean(v))
                                 for k, v in sorted(len_by_diff.items(), key=lambda kv: str(kv[0]))},
        "length_difficulty_corr": _corr([e.difficulty for e in examples], [len(g[0].token_ids) for g in greedy]),
        "samples": [{"prompt": str(e.prompt), **({"system": e.prompt.system} if getattr(e.prompt, "system", None)
                                                   else {}),
                     "completion": g[0].text, "answer": task.extract_answer(g[0].text, e.prompt),
                     "reference": e.answer, "correct": ok}
                    for e, g, ok in list(zip(examples, greedy, correct))[:n_samples_kept]],
    }
    result.update(compute_used(model, result["mean_tokens"]))
    if any(CLOSE in g[0].text for g in greedy):  # answers in MinD's turn format: turns, time to first answer
        result.update(turn_metrics(tok, [g[0].text for g in greedy]))
    if entropy:
        from ..data.collate import encode_prompt
        from ..rollout.score import score

        eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        scored = score(model, [encode_prompt(tok, p) for p in prompts],
                       [g[0].token_ids + (eos if g[0].finish_reason == "stop" else []) for g in greedy],
                       batch_size=cfg.batch_size, pad_id=tok.pad_token_id or 0, entropy=True)
        ents = [h for sc in scored for h in sc.entropy]
        result["mean_entropy"] = float(mean(ents)) if ents else 0.0
    if reference is not None:  # (label, model, tokenizer, its greedy completions): fidelity to it
        label, ref_model, ref_tok, ref_greedy = reference
        result["fidelity_to"] = label
        result.update(fidelity(model, tok, ref_model, ref_tok, ref_greedy, task, cfg, [g[0] for g in greedy]))
    if cfg.k > 1:
        sampled = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           top_p=cfg.top_p, num_samples=cfg.k, batch_size=cfg.batch_size, seed=cfg.seed,
                           stop=stop, progress=progress)
        if hasattr(task, "prepare"):
            task.prepare([o.text for outs in sampled for o in outs])
        passk, maj, p1 = [], [], []
        for e, outs in zip(examples, sampled):
            oks = [task.verify(o.text, e.answer, e.prompt) for o in outs]
            passk.append(pass_at_k(len(oks), sum(oks), cfg.k))
            p1.append(pass_at_k(len(oks), sum(oks), 1))
            vote = majority([task.extract_answer(o.text, e.prompt) for o in outs])
            maj.append(vote is not None and task.verify(task.completion_of(vote), e.answer, e.prompt))
        result.update({f"pass@{cfg.k}": float(mean(passk)), f"maj@{cfg.k}": float(mean(maj)),
                       "pass@1_sampled": float(mean(p1)),
                       "temperature": cfg.temperature, "k": cfg.k})
    return result


def compute_used(model, mean_tokens: float) -> dict:
    """Decoder-layer runs over the generated positions of the greedy pass: `layers_per_token` and
    `layer_runs_per_prompt`, as the model counted them (the System-1.5 student: `compute_used`, with
    latent steps run and skipped), else every layer for every generated token."""
    if hasattr(model, "compute_used"):
        used = model.compute_used()
        used["layer_runs_per_prompt"] = used["layers_per_token"] * used.pop("positions_per_prompt")
        return used
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(layers, int):
        return {}
    return {"layers_per_token": float(layers), "layers_total": layers, "layer_runs_per_prompt": layers * mean_tokens}


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v)


def _difficulties(rows) -> list[str]:
    # "None" is the key of examples without a difficulty: a task that has none gets no columns.
    keys = {str(d) for _, r in rows for d in (r.get("by_difficulty") or {})} - {"None"}

    def order(key):
        try:
            return (0, float(key), key)
        except ValueError:
            return (1, 0.0, key)

    return sorted(keys, key=order)


def _table(title: str, headers: list[str]):
    from rich import box
    from rich.table import Table

    # No vertical rules, no edges: room for the model column in an 80-column terminal.
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    # The model column wraps; the rest are short numbers whose headers must stay whole, so they
    # never wrap and never get narrower than their header (an 80-column terminal cut them before).
    table.add_column(headers[0], overflow="fold")
    for h in headers[1:]:
        table.add_column(h, justify="right", no_wrap=True, min_width=len(h))
    return table


def results_table(rows: list[tuple[str, dict]]):
    """Rich tables comparing several evaluated models: the metrics, then (for tasks with
    difficulties) accuracy by difficulty. One renderable, for `console.print`."""
    from rich.console import Group

    keyed = {k for _, r in rows for k in r if KEYED.match(k)}
    keyed = sorted(keyed, key=lambda k: (k.startswith("maj"), int(KEYED.match(k).group(1))))
    keys = ["accuracy", *keyed] + (["pass@1_sampled"] if any("pass@1_sampled" in r for _, r in rows) else [])
    fid = [k for k in ("agree_answer", "agree_top1", "kl_ref_model") if any(k in r for _, r in rows)]
    # the share of greedy answers with nothing the task's answer format could read (results from
    # before it was counted have none: no column)
    na = ["no_ans"] if any("no_answer_rate" in r for _, r in rows) else []
    speed = ["tok/s"] if any("tokens_per_s" in r for _, r in rows) else []
    agent = ["steps", "parse_err", "exec_err", "max_steps"] if any("agent_steps" in r for _, r in rows) else []
    eps = ["ε (DP)"] if any("epsilon" in r for _, r in rows) else []  # students trained under privacy.*
    # compute, where a model in the table counts its own (System-1.5: layers per token, latent steps skipped)
    used = [k for k, h in (("layers_per_token", "layers/tok"), ("steps_skipped", "skipped"), ("wall_s", "wall s"))
            if any("latent_steps" in r for _, r in rows)]
    heads = {"layers_per_token": "layers/tok", "steps_skipped": "skipped", "wall_s": "wall s"}
    table = _table("retort eval", ["model", "split", "n", *keys, *na, "tokens", *speed, *[heads[k] for k in used],
                                   *fid, *eps, *agent])
    table.caption = ("no_ans: share of greedy answers in which the task's answer format (task.answer) found no "
                     "answer (counted as wrong; a format failure, not a wrong answer); " if na else "") + \
        "tokens: mean completion tokens per answer (greedy)" + (
        "; tok/s: greedy completion tokens per second of generation" if speed else "") + (
        "; layers/tok: decoder layers run per generated position; skipped: latent steps skipped per prompt; "
        "wall s: seconds of the greedy pass" if used else "") + (
        "; agree_answer / agree_top1 / kl_ref_model: fidelity to the --fidelity-to model (same final answer; "
        "same top-1 token and KL(ref || model) per token on its greedy answers)" if fid else "")
    for name, r in rows:
        table.add_row(name, _fmt(r.get("split")), _fmt(r.get("n")),
                      *[_fmt(r.get(k)) for k in keys], *[_fmt(r.get("no_answer_rate")) for _ in na],
                      _fmt(r.get("mean_tokens")),
                      *[f"{r['tokens_per_s']:.1f}" if isinstance(r.get("tokens_per_s"), float) else "-"
                        for _ in speed],
                      *[_fmt(r.get(k)) for k in used],
                      *[_fmt(r.get(k)) for k in fid], *[_fmt(r.get("epsilon")) for _ in eps],
                      *[_fmt(r.get(k)) for k in ("agent_steps", "parse_error_rate", "exec_error_rate",
                                                  "hit_max_steps")][:len(agent)])
    if agent:
        table.caption += ("; agent (agent=code): steps per episode, parse / execution errors per step, share that "
                          "hit agent.max_steps; tokens: the assistant turns'")
    diffs = _difficulties(rows)
    if not diffs:
        return Group(table)
    by_diff = _table("accuracy by difficulty", ["model", *[f"d={d}" for d in diffs]])
    for name, r in rows:
        d = {str(k): v for k, v in (r.get("by_difficulty") or {}).items()}
        by_diff.add_row(name, *[f"{d[k]:.2f}" if isinstance(d.get(k), float) else "-" for k in diffs])
    return Group(table, by_diff)
