"""LoRID's consistency iteration (Li et al., "Multi-LoRA Interaction for Reasoning Distillation",
IJCAI 2025, arXiv:2508.13037; taken from the authors' `src/predict.py`, Xinhe-Li/LoRID) and its
evaluation, `retort eval --lorid`.

Three LoRA adapters on one student base: the intuitive reasoner IR (question -> rationale and
answer), the knowledge generator KG (question -> the knowledge needed) and the deep reasoner DR
(question + knowledge -> rationale and answer). For each question, round i = 1..R (R = 20):
sample one IR answer, one KG knowledge, then one DR answer given that knowledge (temperature 1.5,
top-p 0.9 for all three, as released); add the extracted answers to the multisets A_IR and A_DR;
stop as soon as A_IR and A_DR share an answer. The prediction is a common answer; with several,
the one most frequent in A_IR + A_DR (ties: the first seen), where the released code counts the
question right if any of them is. Never agreeing, the released code scores the question wrong
(`fallback="none"`); `fallback="majority"` (the default here) answers the most frequent answer of
A_IR + A_DR instead. Reported: accuracy, mean iterations, the share that agreed, and the two
ablation rows of the paper: IR alone (greedy, plain CoT distillation) and DR alone (greedy KG
knowledge, then greedy DR).

The prompts of KG and DR are the released ones without "MATH" (`KG_TEMPLATE`, `DR_TEMPLATE`);
IR's prompt is the task's own, as its training traces had it. `retort curate --knowledge` writes the
rows each adapter is trained on with the same templates and records them in its sets' manifests,
which `retort.lm.eval.lorid_runs` reads back, so training and evaluation prompt alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import mean

from ..rollout.generate import generate
from ..tasks.base import Prompt
from .metrics import majority

KG_TEMPLATE = "Please output the knowledge needed to solve the question step by step.\nQuestion: {question}\n\nKnowledge: "
DR_TEMPLATE = ("Please reason step by step based on the given question and knowledge, and output the final "
               "answer.\nQuestion: {question}\n\nKnowledge: {knowledge}\n\nRationale: ")
ROLES = ("ir", "kg", "dr")
FALLBACKS = ("majority", "none")


def kg_prompt(question, template: str = KG_TEMPLATE) -> Prompt:
    """KG's prompt for a task prompt `question` (its system message kept)."""
    return Prompt(template.format(question=str(question).strip()), getattr(question, "system", None))


def dr_prompt(question, knowledge: str, template: str = DR_TEMPLATE) -> Prompt:
    """DR's prompt for a task prompt `question` and the knowledge written for it."""
    return Prompt(template.format(question=str(question).strip(), knowledge=knowledge.strip()),
                  getattr(question, "system", None))


@dataclass
class Outcome:
    """One question's consistency iteration: the answer it gives (None: none), the rounds it took,
    whether IR and DR agreed, and every answer and knowledge sampled, in round order."""

    answer: str | None
    rounds: int
    agreed: bool
    ir: list = field(default_factory=list)
    dr: list = field(default_factory=list)
    knowledge: list = field(default_factory=list)


def consistency(questions: list, sample: Callable, extract: Callable, *, rounds: int = 20,
                fallback: str = "majority", templates: dict | None = None, progress=None) -> list[Outcome]:
    """LoRID's iteration over `questions` (task prompts), batched: each round samples every
    question still open. `sample(role, prompts, round) -> texts` draws one completion per prompt from
    adapter `role` (ir, kg, dr); `extract(text, question) -> answer or None` reads an answer.
    `templates`: {"kg": ..., "dr": ...} in place of `KG_TEMPLATE` / `DR_TEMPLATE`. `progress(k)`: called
    with the number of questions each round closes (and those left open at the end)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    tpl = {"kg": KG_TEMPLATE, "dr": DR_TEMPLATE, **(templates or {})}
    out = [Outcome(None, 0, False) for _ in questions]
    open_ = list(range(len(questions)))
    for rnd in range(rounds):
        if not open_:
            break
        qs = [questions[i] for i in open_]
        ir = sample("ir", list(qs), rnd)
        know = sample("kg", [kg_prompt(q, tpl["kg"]) for q in qs], rnd)
        dr = sample("dr", [dr_prompt(q, k, tpl["dr"]) for q, k in zip(qs, know)], rnd)
        still = []
        for i, q, a, k, d in zip(open_, qs, ir, know, dr):
            o = out[i]
            o.rounds = rnd + 1
            o.ir.append(extract(a, q))
            o.dr.append(extract(d, q))
            o.knowledge.append(k)
            common = {x for x in o.ir if x is not None} & {x for x in o.dr if x is not None}
            if common:
                o.answer, o.agreed = majority([x for x in _interleaved(o) if x in common]), True
            else:
                still.append(i)
        if progress is not None:
            progress(len(open_) - len(still))
        open_ = still
    if progress is not None and open_:
        progress(len(open_))
    for i in open_:
        out[i].answer = majority(_interleaved(out[i])) if fallback == "majority" else None
    return out


def _by_difficulty(examples, ok) -> dict:
    by: dict = {}
    for e, c in zip(examples, ok):
        by.setdefault(e.difficulty, []).append(c)
    return {str(k): float(mean(v)) for k, v in sorted(by.items(), key=lambda kv: str(kv[0]))}


def _interleaved(o: Outcome) -> list:
    """Every answer in round order, IR's before DR's within a round (what "first seen" means)."""
    return [x for pair in zip(o.ir, o.dr) for x in pair]


def evaluate_lorid(adapters, tok, task, cfg, *, rounds: int = 20, temperature: float = 1.5, top_p: float = 0.9,
                   fallback: str = "majority", templates: dict | None = None, progress=None,
                   n_samples_kept: int = 5) -> dict:
    """`retort eval --lorid`: label -> result for the consistency iteration (`lorid`) and its two
    ablations (`lorid:ir`, `lorid:dr`) on `cfg.n` prompts of `cfg.split`. `adapters`: a
    `retort.lm.models.adapters.Adapters` holding ir, kg and dr on one base."""
    from .run import evaluate

    templates = {"kg": KG_TEMPLATE, "dr": DR_TEMPLATE, **(templates or {})}
    examples = task.examples(cfg.split, cfg.n, cfg.seed)
    questions = [e.prompt for e in examples]
    stop = list(getattr(cfg, "stop", None) or []) or None
    role_seed = {r: k for k, r in enumerate(ROLES)}

    def draw(role, prompts, temp, seed):
        with adapters.use(role) as model:
            return [c[0].text for c in generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens,
                                                temperature=temp, top_p=top_p if temp > 0 else 1.0,
                                                batch_size=cfg.batch_size, seed=seed, stop=stop)]

    def sample(role, prompts, rnd):
        return draw(role, prompts, temperature, (cfg.seed * 1_000_003 + rnd) * 3 + role_seed[role])

    outcomes = consistency(questions, sample, lambda text, q: task.extract_answer(text, q), rounds=rounds,
                           fallback=fallback, templates=templates, progress=progress)
    ok = [o.answer is not None and task.verify(task.completion_of(o.answer), e.answer, e.prompt)
          for o, e in zip(outcomes, examples)]
    lorid = {
        "task": task.name, "split": cfg.split, "n": len(examples), "accuracy": float(mean(ok)),
        "no_answer_rate": float(mean(o.answer is None for o in outcomes)),
        "by_difficulty": _by_difficulty(examples, ok),
        "mean_iterations": float(mean(o.rounds for o in outcomes)),
        "agreed": float(mean(o.agreed for o in outcomes)),
        "no_answer": int(sum(o.answer is None for o in outcomes)),
        "rounds": rounds, "temperature": temperature, "top_p": top_p, "fallback": fallback,
        "paper": "LoRID, arXiv:2508.13037 (consistency iteration of src/predict.py)",
        "samples": [{"prompt": str(e.prompt), "reference": e.answer, "answer": o.answer, "correct": c,
                     "rounds": o.rounds, "agreed": o.agreed, "ir_answers": o.ir, "dr_answers": o.dr,
                     "last_knowledge": o.knowledge[-1] if o.knowledge else None}
                    for e, o, c in list(zip(examples, outcomes, ok))[:n_samples_kept]],
    }
    with adapters.use("ir") as model:
        ir_alone = evaluate(model, tok, task, cfg, n_samples_kept=n_samples_kept)
    know = draw("kg", [kg_prompt(q, templates["kg"]) for q in questions], 0.0, 0)
    answers = draw("dr", [dr_prompt(q, k, templates["dr"]) for q, k in zip(questions, know)], 0.0, 0)
    dr_ok = [task.verify(a, e.answer, e.prompt) for a, e in zip(answers, examples)]
    none = [task.extract_answer(a, e.prompt) is None for a, e in zip(answers, examples)]
    dr_alone = {"task": task.name, "split": cfg.split, "n": len(examples), "accuracy": float(mean(dr_ok)),
                "no_answer": int(sum(none)), "no_answer_rate": float(mean(none)),
                "by_difficulty": _by_difficulty(examples, dr_ok),
                "samples": [{"prompt": str(e.prompt), "knowledge": k, "completion": a, "reference": e.answer,
                             "correct": c} for e, k, a, c in list(zip(examples, know, answers, dr_ok))[:n_samples_kept]]}
    return {"lorid": lorid, "lorid:ir": ir_alone, "lorid:dr": dr_alone}


__all__ = [
    "DR_TEMPLATE",
    "FALLBACKS",
    "KG_TEMPLATE",
    "ROLES",
    "Outcome",
    "consistency",
    "dr_prompt",
    "evaluate_lorid",
    "kg_prompt",
]
