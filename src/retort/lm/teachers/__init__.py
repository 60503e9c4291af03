"""Teachers behind one interface: what a method asks of a teacher, whatever the teacher is.

Capabilities (`Teacher.capabilities`):
- `generate`: sample completions of prompt ids (token ids + text; the fast engine can also keep the
  teacher's log-prob and top-k at each sampled position);
- `score`: log-probs of given continuations, optionally the top-k at each position;
- `hidden`: last hidden states and the output layer, for the fused chunked losses (a local model);
- `score_stored`: `score` of the continuations the teacher itself sampled and stored only (enough for
  off-policy KD on its own traces, not for grading a student's rollouts).

Kinds, chosen by `teacher.name` (`registry`): a model (`LocalTeacher`, `local`: preset,
builtin:teacher, a packaged model by name, a directory, a .gguf file, pkg:, a hub id; all four
capabilities), `traces:DIR` (`TraceStoreTeacher`, `store`: the log-probs and top-k `retort traces`
stored: `score_stored`), and
`openai:MODEL` (`ApiTeacher`, `api`: an OpenAI-compatible server, `teacher.api.*`: `generate`, and
`score` where the server offers vLLM's `prompt_logprobs`).
A method declares what it needs (`Method.teacher_needs`); `check_capabilities` stops a run before
step 0, naming the capability and the teachers that have it, without loading the teacher.
"""

from __future__ import annotations

from .api import ApiTeacher
from .base import CAPABILITIES, Teacher
from .local import LocalTeacher
from .registry import KINDS, capabilities_of, check_capabilities, open_teacher
from .store import TraceStoreTeacher, trace_tokenizer

__all__ = ["CAPABILITIES", "KINDS", "ApiTeacher", "LocalTeacher", "Teacher", "TraceStoreTeacher", "capabilities_of",
           "check_capabilities", "open_teacher", "trace_tokenizer"]
