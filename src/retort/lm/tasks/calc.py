"""`calc`: arithmetic on large numbers, answered by a CodeAct agent (agent distillation's toy).

"Q:4821+37*905" is read left to right (as modchain's chains are). A character-level model cannot
multiply 5-digit numbers in its head, but it can write the action that does: each worked
solution is a conversation (`Example.messages`) of one action per operation but the last, each
printing its partial result, the sandbox's output as the tool turn, and a last action calling
`final_answer` on the last observation:

    assistant: ```python\\nprint(4821+37)\\n```      tool: 4858
    assistant: ```python\\nfinal_answer(4858*905)\\n```

so the built-in teacher trained on it (`retort teacher task.name=calc`) acts, reads the
observations and answers with the tool, and `retort traces agent=code` records real episodes of it.
Its answers are read by running the agent (`retort.lm.eval.agent`); as plain text, the `A:` marker.
"""

from __future__ import annotations

import random

from .base import Example
from .builtin import OPS, _Procedural


def action(code: str) -> str:
    return f"```python\n{code}\n```"


class Calc(_Procedural):
    name = "calc"
    description = "left-to-right + - * on large numbers, answered by an agent with a sandboxed Python tool"
    knobs = {"steps_min": (1, 4), "steps_max": (1, 4), "digits": (1, 6)}
    steps_min, steps_max, digits = 1, 2, 4
    agent = "code"  # answered by running the model as an agent (`retort.lm.eval.agent`)

    def _problem(self, rng: random.Random, steps: int) -> Example:
        def number():
            return rng.randrange(10 ** (self.digits - 1) if self.digits > 1 else 0, 10 ** self.digits)

        value, ops = number(), []
        for _ in range(steps):
            ops.append((rng.choice("+-*"), number()))
        prompt = f"Q:{value}" + "".join(f"{op}{x}" for op, x in ops) + "\n"
        messages = []
        for k, (op, x) in enumerate(ops):
            if k == len(ops) - 1:
                messages.append({"role": "assistant", "content": action(f"final_answer({value}{op}{x})")})
            else:
                new = OPS[op](value, x)
                messages += [{"role": "assistant", "content": action(f"print({value}{op}{x})")},
                             {"role": "tool", "content": str(new)}]
            value = OPS[op](value, x)
        solution = "\n".join(m["content"] for m in messages) + f"\nA:{value}"
        return Example("", prompt, str(value), solution, steps, messages)


__all__ = ["Calc", "action"]
