"""`talking`: Talking Models, knowledge distillation through learned messages (Zhao, Liu, Gui, An, Hong
& Chi 2023, Talking Models: Distill Pre-trained Knowledge to Downstream Models via Interactive
Communication, arXiv:2310.03188). The paper body and code were not available; this is the reading of
/work/shared/methods/llm.md §23.2 ([I]), with its open points decided as written below.

Each model has an encoder (its hidden states -> a shared message space of width d_m) and a decoder
(a message -> its own hidden states), at one layer each: E_S, D_S on the student's layer l_S, E_T,
D_T on the teacher's layer l_T (module `talking`, owned by the method: its own optimizer, in every
checkpoint). The teacher's backbone is frozen; the student and the four maps are trained. Per label
token t (the loop normalises by the global count):

    L_t = ce_weight * CE(y_t, z_S)                                    task loss
        + kd_weight * T^2 * D(p_T^T || p_S^T)                         standard KD on outputs
        + align_weight * |E_S(h_S) - sg(E_T(h_T))|^2                  message alignment
        + roundtrip_weight * (|D_S(E_S(h_S)) - sg(h_S)|^2 + |D_T(E_T(h_T)) - h_T|^2)
        + interaction_weight * T^2 * D(sg(p'_T^T) || p_S^T)          the teacher's reply, distilled
        + receive_weight * CE(y_t, z''_S)                             the student predicts from the reply

|.|^2 is the mean over the vector's entries (so a term's size does not grow with the width). The
interaction: the student's message m_S = E_S(h_S) is decoded into the teacher's space, h'_T =
D_T(m_S), and put in place of the teacher's own layer-l_T states at the completion positions; the
teacher's remaining layers (l_T+1 .. L_T, its final norm and lm_head) run from there, giving its
reply logits z'_T and final states h''_T. The student receives D_S(E_T(h''_T)) in place of its own
layer-l_S states at those positions and runs its remaining layers to z''_S. So the message path
student (layers <= l_S) -> teacher (layers > l_T) -> student (layers > l_S) is trained end to end by
the receive CE, through the frozen teacher; the reply's distribution p'_T is a target (stopped), as
the teacher's own p_T is. Prompt positions keep each model's own states: the teacher reads the
prompt itself and hears the student's state on the completion.

Decided here [I]: the reply is read at the teacher's final states (its "remaining layers" end
there), so E_T encodes both layer-l_T and final states; the round-trip target h_S is stopped (the
student's states are not bent towards its own decoder); the reply's distribution is stopped (else
the teacher's reply could simply move to the student). Layers are indexed as transformers'
`output_hidden_states` (0: embeddings, L: the final normed states); l_T < L_T, since the teacher
must have layers to run on the message. Both models must share one tokenizer (states are matched
token by token) and be decoders with `.layers` and a final `.norm` (Llama, Qwen2, Gemma 3, ...).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config import param
from ...errors import ConfigError
from ...losses.fused import fused_linear_divergence
from ..data.collate import IGNORE
from .base import LossOut, OffPolicy, Owned
from .distill import DivergenceConfig, LazyTeacher, default_of
from .examples import data_examples
from .hidden import all_hidden, check_layer_pairs, last_hidden, parse_layer_pairs, unwrap

MODULE = "talking"  # the owned module's name (its checkpoint files: method/talking.*)


# --------------------------------------------------------------------------- the maps


def _map(d_in: int, d_out: int, kind: str) -> torch.nn.Module:
    if kind == "linear":
        return torch.nn.Linear(d_in, d_out)
    width = max(d_in, d_out)
    return torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.GELU(), torch.nn.Linear(width, d_out))


class MessageMaps(torch.nn.Module):
    """E_S (student width -> d_m), D_S (d_m -> student width), E_T, D_T (the same for the teacher),
    linear or one-hidden-layer MLPs, Xavier-initialised from `seed` (their own generator: the global
    random stream is left as it is). `forward(name, x)` applies one of them (`enc_s`, `dec_s`,
    `enc_t`, `dec_t`), so that a wrapped copy is called like the module itself."""

    NAMES = ("enc_s", "dec_s", "enc_t", "dec_t")

    def __init__(self, student_width: int, teacher_width: int, message_dim: int, kind: str = "linear",
                 seed: int = 0):
        super().__init__()
        dims = {"enc_s": (student_width, message_dim), "dec_s": (message_dim, student_width),
                "enc_t": (teacher_width, message_dim), "dec_t": (message_dim, teacher_width)}
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global stream
            self.maps = torch.nn.ModuleDict({n: _map(*dims[n], kind) for n in self.NAMES})
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.xavier_uniform_(m.weight, generator=g)
                    torch.nn.init.zeros_(m.bias)

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        m = self.maps[name]
        return m(x.to(next(m.parameters()).dtype))


# --------------------------------------------------------------------------- the per-token losses


def message_alignment(m_student: torch.Tensor, m_teacher: torch.Tensor) -> torch.Tensor:
    """Per-row mean_d (m_S - sg(m_T))^2, float32: (N, d_m), (N, d_m) -> (N,). The teacher's message
    is a target (no gradient reaches E_T through this term)."""
    return (m_student.float() - m_teacher.detach().float()).pow(2).mean(-1)


def round_trip(decoded: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Per-row mean_d (D(E(h)) - sg(h))^2, float32: (N, D), (N, D) -> (N,); zero when the decoder
    gives the state back."""
    return (decoded.float() - state.detach().float()).pow(2).mean(-1)


# --------------------------------------------------------------------------- running a model from a layer


def decoder_of(model):
    """The decoder stack (`.layers`, `.norm`) of a causal LM (through a DDP or PEFT wrapper), or None."""
    m = unwrap(model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    dec = m.get_decoder() if hasattr(m, "get_decoder") else getattr(m, "model", None)
    if dec is None or not hasattr(dec, "layers") or not hasattr(dec, "norm"):
        return None
    return dec


@contextmanager
def states_at(model, layer: int, states: torch.Tensor, where: torch.Tensor):
    """While open, `model`'s hidden states at `layer` (the index of `output_hidden_states`) are
    `states` (B, T, D) at the positions `where` (B, T) and its own elsewhere, in every forward pass:
    the input of decoder layer `layer`, or the final norm's output for the last index. The layers
    above run from them through the model's own forward (its mask, positions and rotary angles)."""
    dec = decoder_of(model)
    mask = where[..., None]

    def swap(h):
        return torch.where(mask, states.to(h.dtype), h)

    if layer < len(dec.layers):
        def pre(module, args, kwargs):
            if args:
                return (swap(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": swap(kwargs["hidden_states"])}

        handle = dec.layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
    else:
        handle = dec.norm.register_forward_hook(lambda module, args, out: swap(out))
    try:
        yield
    finally:
        handle.remove()


def final_states_from(model, batch, layer: int, states, where, *, hooked=None):
    """The final (normed) hidden states (B, T, D) of `model` on `batch` with its layer-`layer`
    states replaced by `states` at `where` (`states_at`); `hooked`: the module to hook, where `model`
    is a callable around it (a teacher)."""
    with states_at(hooked if hooked is not None else model, layer, states, where):
        return last_hidden(model, batch)


# --------------------------------------------------------------------------- the method


def _text_config(model):
    cfg = getattr(unwrap(model), "config", None)
    return getattr(cfg, "text_config", None) or cfg


class Talking(OffPolicy):
    """The data of `sft` (`data_examples`), the run's teacher as a frozen local model, and the maps
    of `MessageMaps` as the owned module `talking`."""

    name = "talking"
    paper = ("Zhao et al. 2023, Talking Models: Distill Pre-trained Knowledge to Downstream Models via "
             "Interactive Communication, arXiv:2310.03188 (losses: llm.md §23.2's reading)")
    equation = ("L = ce*CE(z_S) + kd*T^2*KL(p_T||p_S) + align*|E_S h_S - sg E_T h_T|^2 + roundtrip*(|D_S E_S h_S "
                "- sg h_S|^2 + |D_T E_T h_T - h_T|^2) + interaction*T^2*KL(sg p'_T||p_S) + receive*CE(z''_S); "
                "p'_T: teacher layers > l_T run from D_T(E_S h_S); z''_S: student layers > l_S from D_S(E_T h''_T)")

    @dataclass
    class Config(DivergenceConfig):
        ce_weight: float = default_of(DivergenceConfig, "ce_weight", 1.0,
                                      "weight of the task loss, cross-entropy of the student on the label tokens")
        temperature: float = param(1.0, "softmax temperature of the KD and interaction terms", lo=0.0, lo_open=True)
        layers: str = param("auto", "the communicating layers STUDENT:TEACHER (e.g. 1:2; indices as "
                            "output_hidden_states: 0 embeddings, L final normed states; the teacher's below its "
                            "last); auto: the middle of each, max(1, L // 2)")
        message_dim: int = param(0, "width of the message space (0: the smaller of the two models' widths)", lo=0)
        maps: str = param("linear", "encoders and decoders: linear maps, or MLPs with one hidden layer",
                          choices=["linear", "mlp"])
        align_weight: float = param(1.0, "weight of the message alignment |E_S h_S - sg(E_T h_T)|^2", lo=0.0)
        roundtrip_weight: float = param(1.0, "weight of the round trips |D(E(h)) - h|^2, student's plus teacher's",
                                        lo=0.0)
        interaction_weight: float = param(1.0, "weight of T^2 * D(teacher's reply to the student's message || "
                                          "student), the reply a stopped target", lo=0.0)
        receive_weight: float = param(1.0, "weight of the student's cross-entropy when it runs from the "
                                      "teacher's decoded reply (what trains the message path)", lo=0.0)
        talk_lr: float = param(0.0, "learning rate of the encoders and decoders (0: train.lr)", lo=0.0)

        def __post_init__(self):
            if self.layers != "auto":
                try:
                    pairs = parse_layer_pairs(self.layers)
                except ValueError as e:
                    raise ConfigError(f"method_args.layers={self.layers!r}: {e}") from None
                if len(pairs) != 1:
                    raise ConfigError(f"method_args.layers={self.layers!r}: one pair STUDENT:TEACHER, got {len(pairs)}")
            weights = ("ce_weight", "kd_weight", "align_weight", "roundtrip_weight", "interaction_weight",
                       "receive_weight")
            if not any(getattr(self, w) for w in weights):
                raise ConfigError(f"method_args: {', '.join(weights)} are all 0; nothing to train")

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.run_teacher = LazyTeacher(ctx)  # one tokenizer: cross-tokenizer runs are refused on open
        self.layers: tuple[int, int] | None = None  # (l_S, l_T), resolved against both models in `owned`

    def examples(self):
        return data_examples(self.ctx)

    def teacher_needs(self) -> tuple:
        return ({"hidden"},)

    def owned(self) -> dict:
        """`talking`, the four maps; resolves and checks the layers against both models first (the
        teacher is opened here, before step 0)."""
        student = self.student()
        teacher = self.run_teacher.open(student)
        for who, m in (("student", student), ("teacher", teacher.model)):
            if decoder_of(m) is None:
                raise ConfigError(f"method=talking runs the {who}'s layers from a message: it needs a decoder "
                                  f"model with .layers and a final .norm (Llama, Qwen2, Gemma 3, ...), not "
                                  f"{type(unwrap(m)).__name__}")
        s_cfg, t_cfg = _text_config(student), _text_config(teacher.model)
        n_s, n_t = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
        if self.cfg.layers == "auto":
            if n_t < 2:
                raise ConfigError(f"method=talking: the teacher has {n_t} layer; it needs at least 2 (one below "
                                  "and one above the layer that hears the student)")
            ls, lt = max(1, n_s // 2), max(1, n_t // 2)
        else:
            (ls, lt), = parse_layer_pairs(self.cfg.layers)
            wrong = check_layer_pairs([(ls, lt)], n_s, n_t)
            if wrong:
                raise ConfigError(f"method_args.layers={self.cfg.layers!r}: {wrong[0]}")
            if lt == n_t:
                raise ConfigError(f"method_args.layers={self.cfg.layers!r}: teacher layer {lt} is its last "
                                  f"({n_t}); the teacher needs layers above it to run on the student's message "
                                  f"(0..{n_t - 1})")
        self.layers = (ls, lt)
        width_s, width_t = s_cfg.hidden_size, t_cfg.hidden_size
        dim = self.cfg.message_dim or min(width_s, width_t)
        self.ctx.say(f"talking: student layer {ls} of {n_s} (width {width_s}) <-> teacher layer {lt} of {n_t} "
                     f"(width {width_t}), messages of width {dim}, {self.cfg.maps} maps")
        maps = MessageMaps(width_s, width_t, dim, self.cfg.maps, seed=self.ctx.run.seed)
        return {MODULE: Owned(maps, lr=self.cfg.talk_lr or None)}

    def loss(self, model, batch) -> LossOut:
        c = self.cfg
        teacher = self.run_teacher.open(model)
        maps = self.owned_modules[MODULE]
        ls, lt = self.layers
        labels = batch["labels"][:, 1:]
        sel = labels != IGNORE
        where = F.pad(sel, (0, 1), value=False)  # (B, T): the positions whose next token is a label
        n = int(sel.sum())
        y = labels[sel]
        scale = c.temperature ** 2 if c.t_squared else 1.0
        w_s = unwrap(model).get_output_embeddings().weight
        w_t = unwrap(teacher.model).get_output_embeddings().weight

        s_states = all_hidden(model, batch)
        with torch.no_grad():
            t_states = all_hidden(teacher, batch)
        h_s, h_t = s_states[ls], t_states[lt]
        m_s = maps("enc_s", h_s)  # every position: the teacher hears whole sequences
        m_t = maps("enc_t", h_t[where])

        def fused(hidden, teacher_hidden, kd_weight, ce_weight):
            return fused_linear_divergence(
                hidden[:, :-1][sel], w_s, y, teacher_hidden=None if teacher_hidden is None else
                teacher_hidden[:, :-1][sel], teacher_weight=w_t, divergence=c.divergence, beta=c.beta,
                alpha=c.alpha, temperature=c.temperature, kd_weight=kd_weight, ce_weight=ce_weight,
                vocab=self.run_teacher.vocab, chunk=c.chunk or None)

        terms, total = {}, w_s.new_zeros((), dtype=torch.float32)
        if c.kd_weight or c.ce_weight:
            loss, kd, ce = fused(s_states[-1], t_states[-1], c.kd_weight * scale, c.ce_weight)
            total = total + loss
            terms.update(kd=kd, ce=ce)
        align = message_alignment(m_s[where], m_t).sum()
        trip = (round_trip(maps("dec_s", m_s[where]), h_s[where]).sum()
                + round_trip(maps("dec_t", m_t), h_t[where]).sum())
        total = total + c.align_weight * align + c.roundtrip_weight * trip
        terms.update(align=align, roundtrip=trip)
        if c.interaction_weight or c.receive_weight:
            reply = final_states_from(teacher, batch, lt, maps("dec_t", m_s), where, hooked=teacher.model)
            if c.interaction_weight:
                loss, kd, _ = fused(s_states[-1], reply, c.interaction_weight * scale, 0.0)
                total = total + loss
                terms["reply_kd"] = kd
            if c.receive_weight:
                received = maps("dec_s", maps("enc_t", reply))
                heard = final_states_from(model, batch, ls, received, where)
                loss, _, ce = fused(heard, None, 0.0, c.receive_weight)
                total = total + loss
                terms["receive_ce"] = ce
        return LossOut(total, n, {k: float(v.detach()) / max(1, n) for k, v in terms.items()})


__all__ = ["MessageMaps", "Talking", "decoder_of", "final_states_from", "message_alignment", "round_trip",
           "states_at"]
