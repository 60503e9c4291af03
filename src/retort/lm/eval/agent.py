"""`retort eval agent=code`: a model evaluated as a CodeAct agent in the sandbox (agent distillation,
arXiv 2505.17612), with self-consistent action generation (`agent.sag=N`). Accuracy is the share
of episodes whose final answer the task accepts; beside it the mean steps, the parse and execution
error rates per step, the share that hit `agent.max_steps`, and, with SAG, how many of the N
actions survived a step on average. The loop itself is `retort.lm.rollout.agent`.
"""

from __future__ import annotations

from statistics import mean
from typing import Optional

from ..rollout.agent import SYSTEM, model_policy, run_episodes, sandbox_executor
from ..tasks import answers


def agent_system(cfg, task) -> Optional[str]:
    """The system turn of `agent.system` (auto: none for a task whose worked solutions are actions,
    whose teacher is trained on the format; else the CodeAct instruction, before the task's own
    system message when it has one)."""
    if cfg.system == "none":
        return None
    if cfg.system != "auto":
        return cfg.system
    if getattr(type(task), "agent", None) == "code":
        return None
    own = task.prompt_format().get("system")
    return SYSTEM + (f"\n\n{own}" if own else "")


def answer_reader(task):
    """`answer_of(turn, prompt)` for a turn without code: the task's own answer format only (no
    fallbacks: a thought that mentions a number is not an answer)."""
    return lambda text, prompt: answers.extract(text, task.answer_mode, prompt, strict=True)


def is_correct(task, final: Optional[str], example) -> bool:
    return final is not None and task.verify(task.completion_of(str(final)), example.answer, example.prompt)


def transcript(messages: list) -> str:
    """The turns after the question, each headed by its role: an episode as one text."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "user"), -1) + 1
    return "\n".join(f"[{m['role']}] {m['content']}" for m in messages[first:])


def summary(episodes) -> dict:
    """The agent metrics of a list of `rollout.agent.Episode`s."""
    steps = sum(e.steps for e in episodes)
    out = {"agent_steps": float(mean(e.steps for e in episodes)) if episodes else 0.0,
           "parse_error_rate": sum(e.parse_errors for e in episodes) / max(1, steps),
           "exec_error_rate": sum(e.exec_errors for e in episodes) / max(1, steps),
           "hit_max_steps": float(mean(e.hit_max_steps for e in episodes)) if episodes else 0.0}
    sag = [s for e in episodes for s in e.sag]
    if sag:
        out["sag_survivors"] = float(mean(s[1] / s[0] for s in sag))
        out["sag_majority"] = float(mean(s[2] / s[0] for s in sag))
    return out


def evaluate_agent(model, tok, task, cfg, agent, *, progress=None, n_samples_kept: int = 5) -> dict:
    """`cfg` an `EvalConfig` (split, n, seed, max_new_tokens per step, batch_size), `agent` an
    `AgentConfig` (max_steps, sag, the sandbox's limits). Greedy actions, or SAG's N samples."""
    from ...errors import ConfigError

    if cfg.k > 1:
        raise ConfigError(f"eval.k={cfg.k} with agent=code: an agent is scored on its greedy episode (or SAG's "
                          "majority, agent.sag=N); set eval.k=1")
    examples = task.examples(cfg.split, cfg.n, cfg.seed)
    execute = sandbox_executor(agent.limits(), agent.observation_chars)
    policy = model_policy(model, tok, max_new_tokens=cfg.max_new_tokens, sag_temperature=agent.sag_temperature,
                          sag_top_p=agent.sag_top_p, batch_size=cfg.batch_size, seed=cfg.seed)
    episodes = run_episodes([e.prompt for e in examples], policy, execute, max_steps=agent.max_steps, sag=agent.sag,
                            answer_of=answer_reader(task), system=agent_system(agent, task), workers=agent.workers)
    if progress is not None:
        progress(len(examples))
    correct = [is_correct(task, ep.final, e) for ep, e in zip(episodes, examples)]
    by_diff: dict = {}
    for ok, e in zip(correct, examples):
        by_diff.setdefault(str(e.difficulty), []).append(ok)
    tokens = [sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) for m in ep.messages
                  if m["role"] == "assistant") for ep in episodes]
    no_answer = [ep.final is None for ep in episodes]
    return {
        "task": task.name, "split": cfg.split, "n": len(examples),
        "params": sum(p.numel() for p in model.parameters()),
        "accuracy": float(mean(correct)),
        "no_answer": int(sum(no_answer)), "no_answer_rate": float(mean(no_answer)),
        "answer_format": f"final_answer(x) of a CodeAct agent in the sandbox (max_steps={agent.max_steps}, "
                         f"sag={agent.sag}), checked as {task.describe_format()}",
        "mean_tokens": float(mean(tokens)),
        "agent": {"max_steps": agent.max_steps, "sag": agent.sag},
        **summary(episodes),
        "by_difficulty": {k: float(mean(v)) for k, v in sorted(by_diff.items())},
        # `completion`: the episode as text (what a report shows), `messages`: the turns themselves
        "samples": [{"prompt": str(e.prompt), "completion": transcript(ep.messages), "messages": ep.messages,
                     "answer": ep.final, "reference": e.answer, "correct": ok, **ep.record()}
                    for e, ep, ok in list(zip(examples, episodes, correct))[:n_samples_kept]],
    }


__all__ = ["agent_system", "answer_reader", "evaluate_agent", "is_correct", "summary", "transcript"]
