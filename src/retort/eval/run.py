"""`retort eval`: greedy pass@1, sampled pass@k and maj@k, completion length, accuracy by difficulty."""

from __future__ import annotations

from collections import defaultdict
from statistics import mean

from ..rollout.generate import generate
from .metrics import majority, pass_at_k


def evaluate(model, tok, task, cfg, *, progress=None, n_samples_kept: int = 5, entropy: bool = False) -> dict:
    """Evaluate on `cfg.n` prompts of `cfg.split`. Returns a JSON-ready dict. `entropy`: also the
    model's mean next-token entropy (nats, temperature 1) over the tokens of its greedy answers
    (EOS step included for answers that stopped) — how much a method narrowed the distribution."""
    examples = task.examples(cfg.split, cfg.n, cfg.seed)
    prompts = [e.prompt for e in examples]
    greedy = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                      batch_size=cfg.batch_size, progress=progress)
    correct = [task.verify(g[0].text, e.answer) for g, e in zip(greedy, examples)]
    by_diff: dict = defaultdict(list)
    for ok, e in zip(correct, examples):
        by_diff[e.difficulty].append(ok)
    result = {
        "task": task.name,
        "split": cfg.split,
        "n": len(examples),
        "accuracy": float(mean(correct)),
        "mean_tokens": float(mean(len(g[0].token_ids) for g in greedy)),
        "truncated": float(mean(g[0].finish_reason == "length" for g in greedy)),
        "by_difficulty": {str(k): float(mean(v)) for k, v in sorted(by_diff.items(), key=lambda kv: str(kv[0]))},
        "samples": [{"prompt": e.prompt, "completion": g[0].text, "reference": e.answer, "correct": ok}
                    for e, g, ok in list(zip(examples, greedy, correct))[:n_samples_kept]],
    }
    if entropy:
        from ..data.collate import encode_prompt
        from ..rollout.score import score

        eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        scored = score(model, [encode_prompt(tok, p) for p in prompts],
                       [g[0].token_ids + (eos if g[0].finish_reason == "stop" else []) for g in greedy],
                       batch_size=cfg.batch_size, pad_id=tok.pad_token_id or 0, entropy=True)
        ents = [h for sc in scored for h in sc.entropy]
        result["mean_entropy"] = float(mean(ents)) if ents else 0.0
    if cfg.k > 1:
        sampled = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           top_p=cfg.top_p, num_samples=cfg.k, batch_size=cfg.batch_size, seed=cfg.seed,
                           progress=progress)
        passk, maj, p1 = [], [], []
        for e, outs in zip(examples, sampled):
            oks = [task.verify(o.text, e.answer) for o in outs]
            passk.append(pass_at_k(len(oks), sum(oks), cfg.k))
            p1.append(pass_at_k(len(oks), sum(oks), 1))
            vote = majority([task.extract_answer(o.text) for o in outs])
            maj.append(vote is not None and task.verify(f"A:{vote}", e.answer))
        result.update({f"pass@{cfg.k}": float(mean(passk)), f"maj@{cfg.k}": float(mean(maj)),
                       "pass@1_sampled": float(mean(p1)),
                       "temperature": cfg.temperature, "k": cfg.k})
    return result


def results_table(rows: list[tuple[str, dict]]):
    """A rich Table comparing several evaluated models."""
    from rich.table import Table

    table = Table(title="retort eval")
    keys = ["accuracy"] + sorted({k for _, r in rows for k in r if k.startswith(("pass@", "maj@"))}) + ["mean_tokens"]
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    diffs = sorted({d for _, r in rows for d in r.get("by_difficulty", {})}, key=lambda d: (len(d), d))
    for d in diffs:
        table.add_column(f"d={d}", justify="right")
    for name, r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k in keys]
        cells += [f"{r['by_difficulty'][d]:.2f}" if d in r.get("by_difficulty", {}) else "-" for d in diffs]
        table.add_row(name, *cells)
    return table
