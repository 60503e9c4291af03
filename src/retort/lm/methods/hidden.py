"""A model's hidden states: the last ones, and log-probs formed from them (what the fused losses read
instead of full logits, `retort.losses.fused`, for the student and a local teacher alike), and the
intermediate ones matched between student and teacher at chosen layer pairs (hidden-state KD)."""

from __future__ import annotations

from typing import Optional

import torch


def unwrap(model):
    """The module inside a DDP (or similar) wrapper, or `model` itself."""
    return getattr(model, "module", model)


def last_hidden(model, batch):
    """Final (normed) hidden states through the model's own forward (so DDP hooks run), with
    logits computed for the last position only."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states[-1]


def logprobs_from_hidden(hidden, weight, labels, *, temperature: float = 1.0, vocab: Optional[int] = None):
    """log softmax(hidden @ weight.T / T)[label] per row, float32, chunk by chunk; no gradient."""
    weight = weight[:vocab] if vocab else weight
    out = torch.empty(labels.shape[0], dtype=torch.float32, device=hidden.device)
    step = max(16, (1 << 22) // weight.shape[0])
    with torch.no_grad():
        for s in range(0, labels.shape[0], step):
            z = (hidden[s:s + step] @ weight.T.to(hidden.dtype)).float() / temperature
            out[s:s + step] = z.gather(1, labels[s:s + step, None])[:, 0] - torch.logsumexp(z, -1)
    return out


__all__ = ["last_hidden", "logprobs_from_hidden", "unwrap"]


# --------------------------------------------------------------------------- hidden-state distillation
#
# Intermediate hidden states of the student matched to the teacher's at chosen layer pairs (the
# "hidden state alignment" of DistillKit, arcee-ai: a layer mapping student -> teacher, one learned
# linear projection per pair when the widths differ; FitNets, Romero et al. 2015, arXiv:1412.6550,
# for the learned regressor). Retort's own: the losses are per-token functions like the divergences,
# the projections a module the method owns (`Owned`: trained by its own optimizer, checkpointed).
#
# Layer index convention, for both models: that of `output_hidden_states` in transformers: 0 is the
# embeddings, i the output of decoder layer i, and L (the number of layers) the final normed states
# the lm_head reads.


def parse_layer_pairs(spec: str) -> list[tuple[int, int]]:
    """`"1:4,2:8"` -> [(1, 4), (2, 8)] (student layer, teacher layer); ValueError naming what is wrong."""
    text = str(spec).strip().rstrip(",")
    if text.isdigit():
        raise ValueError(f"{spec!r} is one number; YAML reads a lone S:T as a base-60 number (1:4 is 64): write "
                         "it with a trailing comma (1:4,) or quoted")
    pairs = []
    for part in text.split(","):
        bits = part.strip().split(":")
        if len(bits) != 2 or not all(b.strip().isdigit() for b in bits):
            raise ValueError(f"{part.strip()!r} is not a pair STUDENT_LAYER:TEACHER_LAYER of non-negative integers "
                             "(e.g. 1:4,2:8)")
        pairs.append((int(bits[0]), int(bits[1])))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{spec!r} lists a pair twice")
    return pairs


def check_layer_pairs(pairs, student_layers: int, teacher_layers: int) -> list[str]:
    """What is wrong with `pairs` for a student of `student_layers` and a teacher of `teacher_layers`
    decoder layers (indices 0 .. L each), as phrases; [] when nothing is."""
    bad = [f"{s}:{t}" for s, t in pairs if not (0 <= s <= student_layers and 0 <= t <= teacher_layers)]
    if not bad:
        return []
    return [f"{', '.join(bad)} out of range: the student has {student_layers} layers (indices 0..{student_layers}), "
            f"the teacher {teacher_layers} (0..{teacher_layers}); 0 is the embeddings, L the final normed states"]


def hidden_mse(student, teacher):
    """Per-row mean squared error, float32: mean_d (s_d - t_d)^2. `student`, `teacher`: (N, D) -> (N,).
    Zero when equal; scales with the teacher's activations (their size is the model's)."""
    return (student.float() - teacher.float()).pow(2).mean(-1)


def hidden_cosine(student, teacher):
    """Per-row cosine distance, float32: 1 - <s, t> / (|s| |t|). (N, D), (N, D) -> (N,), in [0, 2];
    blind to scale (what a pre-norm residual stream's size varies with)."""
    return 1.0 - torch.nn.functional.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)


HIDDEN_LOSSES = {"mse": hidden_mse, "cosine": hidden_cosine}


class LayerProjections(torch.nn.Module):
    """One bias-free linear map student width -> teacher width per layer pair, Xavier-initialised
    from `seed` (its own generator: the global random stream, and so the run's, is left as it is)."""

    def __init__(self, n_pairs: int, student_width: int, teacher_width: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global stream
            self.maps = torch.nn.ModuleList(torch.nn.Linear(student_width, teacher_width, bias=False)
                                            for _ in range(n_pairs))
        with torch.no_grad():
            for m in self.maps:
                torch.nn.init.xavier_uniform_(m.weight, generator=g)

    def forward(self, states, i: int):
        m = self.maps[i]
        return m(states.to(m.weight.dtype))


def all_hidden(model, batch):
    """Every layer's hidden states (index 0 the embeddings, the last the final normed ones), through
    the model's own forward (so DDP hooks run), with logits for the last position only."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states


def hidden_state_loss(student_states, teacher_states, pairs, sel, loss_fn, project=None):
    """Sum over the selected positions of the mean over `pairs` of `loss_fn(project(s), t)`: the
    hidden-state term per label token, summed (the loop normalises). `*_states`: tuples of (B, T, D);
    `sel`: (B, T - 1) bool, the positions whose next token is a label; `project(states, i)`: the
    i-th pair's projection, or None when the widths agree."""
    total = None
    for i, (s, t) in enumerate(pairs):
        hs = student_states[s][:, :-1][sel]
        ht = teacher_states[t][:, :-1][sel].detach()
        if project is not None:
            hs = project(hs, i)
        part = loss_fn(hs, ht).sum()
        total = part if total is None else total + part
    return total / len(pairs)


__all__ += ["HIDDEN_LOSSES", "LayerProjections", "all_hidden", "check_layer_pairs", "hidden_cosine", "hidden_mse",
            "hidden_state_loss", "parse_layer_pairs"]
