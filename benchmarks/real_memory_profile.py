"""Where the memory of a real kd run goes (issue 29 item 6; `benchmarks/real_memory.py` measures the peak):

    python benchmarks/real_memory_profile.py marks OUT.json -- OVERRIDES...   # `retort train OVERRIDES`
    python benchmarks/real_memory_profile.py activations OUT.json --student smollm2-135m-instruct \
        --batch 8 --len 192

- `marks`: runs `retort train` in this process with its RSS sampled every 0.1 s and marked at each
  phase (models loaded, the teacher opened, each loss forward with its graph alive, backward,
  optimizer step, the fidelity reference, the evaluation, the export), so the JSON says which phase
  reached which RSS. tracemalloc does not see torch's allocations; RSS does (glibc keeps freed
  heap pages, so RSS after a phase is that phase's high-water mark, not what is live).
- `activations`: what the student's forward (as the kd losses run it: last hidden states, logits
  for the last position only) keeps for the backward (torch's saved-tensor hooks,
  each storage once, the weights excluded) on a random batch of `--batch` x `--len` tokens, by the
  last dimension of the tensors kept (1536: SmolLM2's MLP, 576: its hidden states, 64: attention
  heads), without and with `student.grad_checkpointing`.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def marks(out: str, overrides: list[str]) -> dict:
    t0 = time.monotonic()
    samples, marked, stop = [], [], threading.Event()

    def mark(what: str) -> None:
        marked.append([round(time.monotonic() - t0, 2), what, _rss()])
        print(f"{marked[-1][0]:8.1f}s {marked[-1][2] / 2 ** 30:6.2f} GiB  {what}", flush=True)

    def sample() -> None:
        while not stop.is_set():
            samples.append([round(time.monotonic() - t0, 2), _rss()])
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import retort.cli
    from retort.lm import track as lm_track
    from retort.lm.eval import run as eval_run
    from retort.lm.methods import METHODS, distill
    from retort.lm.models import load as model_load
    mark("imports")

    def wrap(owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        def wrapped(*a, **k):
            mark(f"{label} start")
            try:
                return f(*a, **k)
            finally:
                mark(f"{label} end")
        setattr(owner, name, wrapped)

    wrap(model_load, "_load", "load a model")
    wrap(distill.LazyTeacher, "open", "open the teacher")
    wrap(eval_run, "teacher_answers", "the fidelity reference's answers")
    wrap(eval_run, "evaluate", "evaluate")
    wrap(lm_track.LMTrack, "export", "export the student")
    # every method's loss: the forward with its graph alive at its end
    for cls in set(METHODS.values()):
        if "loss" in cls.__dict__:
            wrap(cls, "loss", f"{cls.name} loss (its graph alive at its end)")
    backward = torch.Tensor.backward

    def marked_backward(self, *a, **k):
        r = backward(self, *a, **k)
        mark("backward end")
        return r
    torch.Tensor.backward = marked_backward
    register_optimizer_step_post_hook(lambda opt, a, k: mark("optimizer step end"))
    try:
        retort.cli.main(["train", *overrides])
    finally:
        stop.set()
        mark("end")
    res = {"command": "retort train " + " ".join(overrides), "marks": marked,
           "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "samples_per_second": _per_second(samples)}
    _write(out, res)
    return res


def _per_second(samples: list) -> list:
    per: dict = {}
    for t, r in samples:
        per[int(t)] = max(per.get(int(t), 0), r)
    return [[t, r] for t, r in sorted(per.items())]


def activations(out: str, student: str, batch: int, length: int) -> dict:
    res = {"student": student, "batch": batch, "len": length,
           "plain": _kept(student, batch, length, False), "grad_checkpointing": _kept(student, batch, length, True)}
    _write(out, res)
    return res


def _kept(student: str, batch: int, length: int, ckpt: bool) -> dict:
    import torch

    from retort.config import load_config
    from retort.lm.config import TrainRun
    from retort.lm.track import LMTrack

    over = [f"student.name={student}", "student.prune_check=0"] + (["student.grad_checkpointing=true"] if ckpt else [])
    model, tok = LMTrack().load_student(load_config(TrainRun, None, over), None, 0)
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(0, len(tok), (batch, length))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict = {}
    by_width: collections.Counter = collections.Counter()

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in weights and key not in kept:
            kept[key] = t.untyped_storage().nbytes()
            by_width[str(t.shape[-1]) if t.dim() else "scalar"] += kept[key]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        # as retort's distillation losses run it (`last_hidden`): the last hidden states, no full logits
        model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, logits_to_keep=1)
    total = sum(kept.values())
    print(f"{student} {batch}x{length}{' grad_checkpointing' if ckpt else ''}: {total / 2 ** 30:.3f} GiB kept for "
          f"the backward ({total / (batch * length) / 2 ** 10:.0f} KiB per token)")
    return {"saved_for_backward_bytes": total, "per_token_bytes": round(total / (batch * length)),
            "by_last_dim_bytes": dict(by_width.most_common())}


def _write(out: str, res: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2) + "\n")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = []
    if "--" in argv:
        argv, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("marks")
    m.add_argument("out")
    a = sub.add_parser("activations")
    a.add_argument("out")
    a.add_argument("--student", default="smollm2-135m-instruct")
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--len", type=int, default=192)
    args = ap.parse_args(argv)
    if args.what == "marks":
        return marks(args.out, rest)
    return activations(args.out, args.student, args.batch, args.len)


if __name__ == "__main__":
    main()
