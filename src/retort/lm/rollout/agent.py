"""The CodeAct loop of agent distillation: a model writes a thought and one fenced Python action,
the sandbox runs it, its output comes back as a tool turn, until a final answer or `max_steps`.

Kang et al., "Distilling LLM Agent into Small Models with Retrieval and Code Tools" (NeurIPS 2025,
arXiv 2505.17612; repo Nardien/agent-distillation, on smolagents' CodeAgent). Taken from the
authors' code: the action is the first ```python block of a turn (smolagents' `parse_code_blobs`;
what the model writes after it is cut, so it never invents its own observation); the answer is a
`final_answer(x)` call inside an action (smolagents' convention); a turn with no code block is a
parse error, answered with a tool turn saying so (unless the task's answer format reads an answer
from it: a model trained to answer as the task asks, e.g. "A:42" after the observation, ends
there too); state persists across steps (each action runs after the earlier ones that ran
without error: `retort.sandbox.Session`'s replay); the episode records its steps, parse errors,
execution errors and whether it hit `max_steps` (the paper's filter, `filter_agent_training_data.py`).
First-thought prefix (FTP, `build_prefix_memory.py`): step 1 continues a partial assistant message,
"Thought: " + the first paragraph of the model's own CoT answer + "\n\n", kept in the turn.
Self-consistent action generation (SAG, `agents.py`: `check_code_integrity`,
`get_most_common_output_code`): N sampled actions per step, those that fail to parse or run are
dropped, the survivors grouped by their execution output and the first of the largest group taken
(ties: the group seen first); none survives: the first sample.

The loop is the model-free part: `run_episodes(prompts, policy, execute, ...)` with a `policy`
(conversations -> sampled turns; `model_policy` for a local model, `teacher_policy` for any
generating Teacher) and an executor `execute(code, cells) -> Result` (`sandbox_executor`; tests
inject scripted ones). Rows are `messages` lists (system?, user, assistant, tool, ...), whose loss
mask `retort.lm.data.collate.encode_messages` takes from the roles; `conversation_ids` renders a
conversation for generation exactly as `encode_messages` renders it for training.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

# the action: the first fenced python block (```python or ```py); the turn is cut after its fence
ACTION = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
FINAL_MARK = "<<retort-final-answer>>"
# defined in the sandbox before every action (replayed first, its output discarded): the answer is
# printed after a marker and the action ends there, as smolagents' `final_answer` tool ends a run
PRELUDE = (
    "def final_answer(answer):\n"
    "    import sys\n"
    f"    sys.stdout.write('\\n{FINAL_MARK}' + str(answer) + '\\n')\n"
    "    sys.stdout.flush()\n"
    "    raise SystemExit(0)\n"
)
# what a general chat model is told (the built-in calc task's teacher is trained on the format instead)
SYSTEM = ("Solve the task with Python. In each step write a short thought, then one Python code block "
          "(```python ... ```); what it prints comes back as an observation, and variables persist between "
          "steps. When you know the answer, call final_answer(answer) in a code block.")
NO_CODE = ("Error: no code block found. Write a thought, then your action as ```python ... ```; "
           "call final_answer(answer) to answer.")


def parse_action(text: str) -> tuple[str, Optional[str]]:
    """(the turn as kept, its code): the turn is cut after the first python block's closing fence;
    code is None when there is no complete block (a parse error)."""
    m = ACTION.search(text)
    if m is None:
        return text.strip(), None
    return text[:m.end()].strip(), m.group(1).strip("\n")


def first_thought(cot: str) -> str:
    """FTP's prefix from a CoT answer: "Thought: " + its first paragraph + a blank line (the
    authors' `"Thought: " + response.split("\\n\\n")[0] + "\\n\\n"`)."""
    return "Thought: " + cot.strip().split("\n\n")[0].strip() + "\n\n"


@dataclass
class Outcome:
    """One action's execution, as the loop reads it."""

    ok: bool  # ran to the end (or to final_answer) without error
    observation: str  # what the tool turn says
    output: str  # the printed output (SAG groups by it)
    final: Optional[str] = None  # the final_answer(x) value, when it was called


def read_result(res, observation_chars: int = 1000) -> Outcome:
    """A sandbox `Result` as an `Outcome`: a final answer, else the output (cut to
    `observation_chars`) or the error's last line."""
    out = res.stdout or ""
    if FINAL_MARK in out and res.ok:
        before, _, after = out.partition(FINAL_MARK)
        return Outcome(True, "", before, after[:-1] if after.endswith("\n") else after)
    cut = out if len(out) <= observation_chars else out[:observation_chars] + f"\n...({len(out)} characters)"
    if res.ok:
        return Outcome(True, cut.strip() or "(no output)", out)
    if res.timed_out or res.killed_by:
        why = "timed out" if res.timed_out else f"killed by {res.killed_by}"
        return Outcome(False, (cut.strip() + "\n" if cut.strip() else "") + f"Error: the action {why}", out)
    lines = [ln for ln in (res.stderr or "").strip().splitlines() if ln.strip()]
    error = lines[-1] if lines else f"exit code {res.exit_code}"
    return Outcome(False, (cut.strip() + "\n" if cut.strip() else "") + f"Error: {error}", out)


def sandbox_executor(limits, observation_chars: int = 1000) -> Callable:
    """`execute(code, cells) -> Outcome` in the sandbox: a fresh one per call, replaying `PRELUDE`
    and the episode's earlier cells first (`retort.sandbox.run`). Checks now that the sandbox
    starts, refusing in one line where it cannot."""
    from ...sandbox import check, run

    check(limits)
    return lambda code, cells: read_result(run(code, limits, cells=(PRELUDE, *cells)), observation_chars)


@dataclass
class Episode:
    """One question's run: the conversation and what happened in it."""

    messages: list
    cells: list = field(default_factory=list)  # actions that ran without error (the state)
    steps: int = 0
    parse_errors: int = 0
    exec_errors: int = 0
    final: Optional[str] = None  # the answer (final_answer's value, or read by the task's format)
    hit_max_steps: bool = False
    context_full: bool = False  # ended because the conversation filled the model's context (hit_max_steps too)
    done: bool = False
    sag: list = field(default_factory=list)  # per step with N > 1: [candidates, survivors, largest group]

    def record(self) -> dict:
        """What a trace row keeps of it (its `agent` column)."""
        return {"steps": self.steps, "parse_errors": self.parse_errors, "exec_errors": self.exec_errors,
                "hit_max_steps": self.hit_max_steps, "final_answer": self.final,
                **({"context_full": True} if self.context_full else {}), **({"sag": self.sag} if self.sag else {})}


def choose(candidates: list[tuple[str, Optional[str], Optional[Outcome]]]) -> int:
    """SAG's pick among (turn, code, outcome) candidates: the first of the largest group of those
    that parsed and ran, grouped by their output (a final answer by its value); 0 when none did."""
    groups: OrderedDict = OrderedDict()
    for i, (_, code, out) in enumerate(candidates):
        if code is not None and out is not None and out.ok:
            key = ("final", out.final) if out.final is not None else ("output", out.output)
            groups.setdefault(key, []).append(i)
    if not groups:
        return 0
    return max(groups.values(), key=len)[0]  # max keeps the first of equal sizes: the group seen first


def run_episodes(prompts: list, policy: Callable, execute: Callable, *, max_steps: int = 5, sag: int = 1,
                 answer_of: Optional[Callable] = None, prefixes: Optional[list] = None, system: Optional[str] = None,
                 workers: int = 2, progress: Optional[Callable] = None) -> list[Episode]:
    """Run one episode per prompt, all episodes stepping together (one batched `policy` call a
    step). `policy(conversations, prefixes, n) -> [[turn text] * n]`: n sampled continuations of
    each conversation's next assistant turn after its prefix (None for a conversation that fills
    the model's context: the episode ends, as out of steps). `execute(code, cells) -> Outcome`.
    `answer_of(text, prompt)`: the task's answer read from a turn without code (None: none).
    `prefixes`: FTP's partial first turns (per prompt; "" for none). `system`: a system turn first
    (else the prompt's own system message, `tasks.Prompt`)."""
    episodes = []
    for p in prompts:
        sys_msg = system if system is not None else getattr(p, "system", None)
        msgs = ([{"role": "system", "content": sys_msg}] if sys_msg else []) + [{"role": "user", "content": str(p)}]
        episodes.append(Episode(msgs))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for step in range(max_steps):
            live = [i for i, e in enumerate(episodes) if not e.done]
            if not live:
                break
            pre = [(prefixes[i] or "") if (prefixes and step == 0) else "" for i in live]
            outs = policy([episodes[i].messages for i in live], pre, sag)
            cands = []  # per live episode: [(turn, code)] * n; None: its conversation fills the context
            for (i, p_), texts in zip(zip(live, pre), outs):
                cands.append(None if texts is None else [parse_action(p_ + t) for t in texts])
            # run every candidate that parsed (SAG runs all N; greedy runs its one), in parallel
            jobs = [(k, j) for k, cs in enumerate(cands) for j, (_, code) in enumerate(cs or []) if code is not None]
            states = [tuple(episodes[i].cells) for i in live]
            ran = dict(zip(jobs, pool.map(lambda kj, c=cands, st=states: execute(c[kj[0]][kj[1]][1], st[kj[0]]),
                                          jobs)))
            for k, i in enumerate(live):
                e = episodes[i]
                if cands[k] is None:  # no room for another turn: ended like an episode out of steps
                    e.hit_max_steps = e.context_full = e.done = True
                    continue
                full = [(turn, code, ran.get((k, j))) for j, (turn, code) in enumerate(cands[k])]
                pick = choose(full) if len(full) > 1 else 0
                if len(full) > 1:
                    kept = Counter((o.final, o.output) for _, code, o in full if code is not None and o is not None and o.ok)
                    e.sag.append([len(full), sum(kept.values()), max(kept.values(), default=0)])
                turn, code, out = full[pick]
                e.steps += 1
                e.messages.append({"role": "assistant", "content": turn})
                if code is None:
                    said = answer_of(turn, prompts[i]) if answer_of is not None else None
                    if said is not None:  # the task's own answer format ends the episode
                        e.final, e.done = said, True
                        continue
                    e.parse_errors += 1
                    e.messages.append({"role": "tool", "content": NO_CODE})
                elif out.final is not None:
                    e.cells.append(code)
                    e.final, e.done = out.final, True
                    continue
                else:
                    if out.ok:
                        e.cells.append(code)
                    else:
                        e.exec_errors += 1
                    e.messages.append({"role": "tool", "content": out.observation})
                if e.steps >= max_steps:
                    e.hit_max_steps, e.done = True, True
            if progress is not None:
                progress(step, sum(e.done for e in episodes))
    return episodes


# --------------------------------------------------------------------------- policies


def conversation_ids(tok, messages: list[dict], prefix: str = "") -> list[int]:
    """The ids a model continues to write the next assistant turn: the conversation exactly as
    `encode_messages` renders it in training, then the assistant turn's head (the chat template's
    generation prompt; without a template, nothing), then `prefix`'s tokens."""
    from ..data.collate import encode_messages

    if getattr(tok, "chat_template", None):
        out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(out["input_ids"] if hasattr(out, "keys") else out)
    else:
        ids = encode_messages(tok, [*messages, {"role": "assistant", "content": ""}]).input_ids
        if tok.eos_token_id is not None and ids and ids[-1] == tok.eos_token_id:
            ids = ids[:-1]  # the empty turn's EOS: the model writes the turn there
    return ids + (tok(prefix, add_special_tokens=False)["input_ids"] if prefix else [])


def model_policy(model, tok, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 sag_temperature: float = 0.4, sag_top_p: float = 0.8, batch_size: int = 16, seed: int = 0) -> Callable:
    """A local model's `policy`: greedy (or `temperature`) for one action a step; with n > 1 (SAG)
    n samples at `sag_temperature`, `sag_top_p` (the authors' 0.4 and 0.8). Seeded per step."""
    from .generate import _context, generate_ids

    calls = [0]

    limit = _context(model)

    def policy(convs, prefixes, n):
        calls[0] += 1
        ids = [conversation_ids(tok, m, p) for m, p in zip(convs, prefixes)]
        fits = [i for i, x in enumerate(ids) if limit is None or len(x) + max_new_tokens <= limit]
        t, tp = (sag_temperature, sag_top_p) if n > 1 else (temperature, top_p)
        outs = generate_ids(model, tok, [ids[i] for i in fits], max_new_tokens=max_new_tokens, temperature=t,
                            top_p=tp, num_samples=n, batch_size=batch_size, seed=seed * 1000 + calls[0]) if fits else []
        texts: list = [None] * len(ids)  # None: the conversation leaves no room for a turn
        for i, o in zip(fits, outs):
            texts[i] = [c.text for c in o]
        return texts

    return policy


class Conversation(str):
    """A prompt that is a whole conversation (`messages`, and a partial assistant turn `prefix`):
    a str (its last user turn) for code that reads prompts as text; an API teacher sends the
    messages (`ApiTeacher.body`)."""

    messages: list
    prefix: str = ""

    def __new__(cls, messages: list, prefix: str = ""):
        self = super().__new__(cls, next((m["content"] for m in reversed(messages) if m["role"] == "user"), ""))
        self.messages, self.prefix = messages, prefix
        return self


def teacher_policy(teacher, **kw) -> Callable:
    """`policy` of any Teacher that generates: a local one's model directly (`model_policy`),
    another (an API teacher) through `generate` with `Conversation` prompts."""
    model = getattr(teacher, "model", None)
    if model is not None:
        return model_policy(model, teacher.tokenizer, **kw)
    calls = [0]

    def policy(convs, prefixes, n):
        calls[0] += 1
        t, tp = (kw.get("sag_temperature", 0.4), kw.get("sag_top_p", 0.8)) if n > 1 else \
            (kw.get("temperature", 0.0), kw.get("top_p", 1.0))
        outs = teacher.generate([Conversation(m, p) for m, p in zip(convs, prefixes)],
                                max_new_tokens=kw["max_new_tokens"], temperature=t, top_p=tp, num_samples=n,
                                seed=kw.get("seed", 0) * 1000 + calls[0])
        return [[c.text for c in o] for o in outs]

    return policy


__all__ = ["ACTION", "Conversation", "Episode", "FINAL_MARK", "NO_CODE", "Outcome", "PRELUDE", "SYSTEM", "choose",
           "conversation_ids", "first_thought", "model_policy", "parse_action", "read_result", "run_episodes",
           "sandbox_executor", "teacher_policy"]
