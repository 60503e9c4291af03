"""`system15`: System-1.5 Reasoning, latent shortcuts (NeurIPS 2025, arXiv:2505.18962), trained as a
chain of two runs (`method_args.stage`):

1. stage=1, language to latent: the student (`retort.lm.models.system15`, built around the run's
   student) learns to answer after `latent_steps` continuous thoughts, taught by itself reading the
   written-out CoT (the task's worked solutions, or correct teacher traces): CE on the answer in both
   passes and an L1 alignment of every layer's state at the token before the answer value (CODI's
   terms; the paper names the stage only).
2. stage=2, full path to shortcut: from the stage-1 model (`student.name=RUN1/model`), only the
   routers and adapters train (base and latent projection frozen, so the full path stays the
   stage-1 model and is the teacher): CE on the answer along the soft shortcut path, MSE to the
   teacher's states at every generated position and layer, and a sparsity pressure on the routers.

Two runs rather than one run of two phases: each stage is resumable on its own, and stage 1's model is
itself a result (the latent-uniform baseline of the paper's ordering, every layer and step run).
Losses: `retort.losses.latent`. `method_args.lambda_depth` / `lambda_step` are written into the model
as the thresholds it generates with (`retort eval --lambda-depth/--lambda-step` override them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ...errors import ConfigError, DataError, ModelError
from ...losses.latent import language_to_latent_loss, shortcut_loss
from ..data.collate import IGNORE, encode_prompt
from ..data.traces import read_manifest, read_traces
from ..tasks.base import Prompt, manifest_format
from .base import LossOut, OffPolicy


@dataclass
class LatentExample:
    prompt_ids: list
    cot_ids: list
    answer_ids: list   # the answer line and EOS
    align: int         # tokens of the answer line before its value ('A:' -> 2)

    @property
    def input_ids(self) -> list:  # the CoT pass, whose length buckets the batches
        return self.prompt_ids + self.cot_ids + self.answer_ids


def split_solution(text: str, answer_line: str, answer: str) -> tuple[str, str] | None:
    """(CoT, answer line) of a worked solution ending with the task's answer line, else None."""
    body = text.rstrip()
    if not answer_line or not body.endswith(answer_line):
        return None
    return body[:len(body) - len(answer_line)], answer_line


class System15(OffPolicy):
    name = "system15"
    paper = ("System-1.5 Reasoning: Traversal in Language and Latent Spaces with Dynamic Shortcuts (Wang et al., "
             "NeurIPS 2025, arXiv:2505.18962); stage-1 terms from CODI (Shen et al., arXiv:2502.21074)")
    equation = ("stage 1: CE_latent(answer) + b CE_CoT + g (1/L) sum_l |h_S,l - sg h_T,l| / std(h_T,l); stage 2: "
                "CE_shortcut(answer) + c MSE(h_S, sg h_full) / var(h_full) + rho [mean(1 - w) + mean(1 - s)]")

    @dataclass
    class Config:
        stage: int = param(1, "1: language-to-latent self-distillation (from any Llama-family student); 2: full-path-"
                           "to-shortcut (student.name = a stage-1 run's model)", lo=1, hi=2)
        latent_steps: int = param(6, "k, the continuous thoughts before the answer (stage 1; stage 2 keeps the "
                                  "stage-1 model's)", lo=0)
        adapter_rank: int = param(16, "stage 1: rank of each layer's adapter (the depth shortcut)", lo=1)
        router_hidden: int = param(16, "stage 1: hidden width of each router (FFN + sigmoid)", lo=1)
        teacher_weight: float = param(1.0, "stage 1: weight of the CE of the pass reading the CoT", lo=0.0)
        align_weight: float = param(1.0, "stage 1: weight of the hidden-state alignment", lo=0.0)
        hidden_weight: float = param(1.0, "stage 2: weight of the MSE to the full path's states (over their "
                                     "variance)", lo=0.0)
        sparsity: float = param(0.1, "stage 2: weight of the pressure mean(1 - w) + mean(1 - s) that makes the "
                                "routers take shortcuts", lo=0.0)
        lambda_depth: float = param(0.5, "inference: a layer is shortcut where its router's w > 1 - lambda_depth "
                                    "(0: every layer, 1: adapters only); saved in the model", lo=0.0, hi=1.0)
        lambda_step: float = param(0.5, "inference: a latent step is skipped where s > 1 - lambda_step (0: every "
                                   "step); saved in the model", lo=0.0, hi=1.0)

    # ------------------------------------------------------------------ the student
    @classmethod
    def prepare_student(cls, model, cfg, task, seed: int):
        # imported here: transformers loads when a run needs it, not with the method table
        from ..models.system15 import System15ForCausalLM

        if isinstance(model, System15ForCausalLM):
            if cfg.stage == 1 and model.config.latent_steps != cfg.latent_steps:
                raise ConfigError(f"method_args.latent_steps={cfg.latent_steps}: the System-1.5 student given has "
                                  f"{model.config.latent_steps}")
        elif cfg.stage == 2:
            raise ConfigError("method_args.stage=2 trains the shortcuts of a stage-1 model: set student.name to the "
                              "model/ directory of a method=system15 stage=1 run")
        elif hasattr(model, "peft_config"):
            raise ModelError("method=system15 builds its own modules around the student: train it without student.lora")
        else:
            model = System15ForCausalLM.wrap(model, latent_steps=cfg.latent_steps, adapter_rank=cfg.adapter_rank,
                                             router_hidden=cfg.router_hidden, seed=seed)
        model.set_thresholds(cfg.lambda_depth, cfg.lambda_step)
        stage2 = cfg.stage == 2
        model.requires_grad_(not stage2)
        for p in model.shortcut_parameters():
            p.requires_grad_(stage2)
        return model

    # ------------------------------------------------------------------ data
    def rows(self) -> list[tuple]:
        """(prompt, worked solution or correct trace, reference answer) of the configured source."""
        run = self.ctx.run
        if run.data.source == "answers":
            raise ConfigError("method=system15 distils a written-out CoT into latent steps: use data.source=solutions "
                              "(the task's worked solutions) or traces")
        if run.data.source == "traces":
            cols = read_traces(run.data.traces, columns=["prompt", "completion", "correct", "reference"]).to_pydict()
            system = manifest_format(read_manifest(run.data.traces))["system"]
            keep = [i for i, ok in enumerate(cols["correct"]) if ok][:run.data.n_train]
            return [(Prompt(cols["prompt"][i], system), cols["completion"][i], cols["reference"][i]) for i in keep]
        return [(ex.prompt, ex.solution, ex.answer) for ex in self.ctx.train_rows() if ex.solution]

    def examples(self) -> list[LatentExample]:
        tok, task, run = self.ctx.tokenizer, self.ctx.task, self.ctx.run
        eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        out, rows = [], self.rows()
        for prompt, text, answer in rows:
            line = task.completion_of(answer)
            parts = split_solution(text, line, str(answer))
            if parts is None:
                continue
            cot, line = parts
            prefix = line[:line.rfind(str(answer))] if str(answer) in line else ""
            ex = LatentExample(encode_prompt(tok, prompt), tok(cot, add_special_tokens=False)["input_ids"],
                               tok(line, add_special_tokens=False)["input_ids"] + eos,
                               len(tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0)
            if len(ex.input_ids) <= run.data.max_len:
                out.append(ex)
        if not out:
            raise DataError(f"method=system15: no row of {len(rows)} ends with the task's answer line (e.g. "
                            f"{task.completion_of('42')!r}) within data.max_len={run.data.max_len}; the CoT is the "
                            "text before it")
        self.ctx.dropped(len(rows) - len(out), len(rows), "rows (no answer line at the end, or too long)")
        return self.ctx.cycle(out) if run.data.source != "traces" else out

    def batches(self, plan):
        pad = self.ctx.tokenizer.pad_token_id or 0
        k = self.student().config.latent_steps
        for _, items in self.example_batches(plan):
            yield collate_latent(items, pad, k)

    def count(self, batch) -> int:
        return int(batch["prompt_ids"].shape[0])

    # ------------------------------------------------------------------ the losses
    def loss(self, model, batch) -> LossOut:
        args = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "answer_ids", "answer_mask")}
        labels = batch["answer_labels"]
        c = self.cfg
        if c.stage == 1:
            s = model(system15={**args, "route": None})
            t_logits, t_states = model(system15={"tokens": (batch["cot_ids"], batch["cot_mask"])})
            rows = torch.arange(labels.shape[0], device=labels.device)
            s_align = s["states"][rows, batch["student_align"]]
            t_align = t_states[rows, batch["teacher_align"]]
            loss, parts = language_to_latent_loss(s["logits"], labels, t_logits[:, :-1], batch["cot_labels"],
                                                  s_align, t_align, teacher_weight=c.teacher_weight,
                                                  align_weight=c.align_weight)
        else:
            with torch.no_grad():
                t = model(system15={**args, "route": None})
            s = model(system15={**args, "route": "soft"})
            loss, parts = shortcut_loss(s["logits"], labels, s["states"], t["states"], s["latent"], t["latent"],
                                        s["mask"], s["w"], s["s"], hidden_weight=c.hidden_weight, sparsity=c.sparsity)
            m = s["mask"].float()[..., None]
            parts["router_w"] = (s["w"].detach() * m).sum((1, 2)) / (m.sum((1, 2)) * s["w"].shape[-1]).clamp_min(1)
            if s["s"].shape[1]:
                parts["step_s"] = s["s"].detach().mean(-1)
        return LossOut(loss.sum(), int(loss.shape[0]), {k: float(v.detach().mean()) for k, v in parts.items()})


def collate_latent(items: list[LatentExample], pad: int, latent_steps: int) -> dict:
    """Tensors of a micro-batch: prompts left-padded; answers right-padded (labels IGNORE at padding);
    the CoT pass (prompt + CoT + answer) right-padded with its shifted labels (the CoT and the
    answer); and where each pass's aligned state is (the token before the answer value): in the
    generated positions of the latent pass (k + align - 1) and in the CoT pass."""
    B = len(items)
    lp = max(len(x.prompt_ids) for x in items)
    la = max(len(x.answer_ids) for x in items)
    lt = max(len(x.input_ids) for x in items)
    prompt = torch.full((B, lp), pad, dtype=torch.long)
    prompt_mask = torch.zeros((B, lp), dtype=torch.long)
    answer = torch.full((B, la), pad, dtype=torch.long)
    answer_mask = torch.zeros((B, la), dtype=torch.long)
    cot = torch.full((B, lt), pad, dtype=torch.long)
    cot_mask = torch.zeros((B, lt), dtype=torch.long)
    cot_labels = torch.full((B, lt - 1), IGNORE, dtype=torch.long)
    s_align, t_align = [], []
    for i, x in enumerate(items):
        p, a, seq = x.prompt_ids, x.answer_ids, x.input_ids
        prompt[i, lp - len(p):], prompt_mask[i, lp - len(p):] = torch.tensor(p), 1
        answer[i, :len(a)], answer_mask[i, :len(a)] = torch.tensor(a), 1
        cot[i, :len(seq)], cot_mask[i, :len(seq)] = torch.tensor(seq), 1
        cot_labels[i, len(p) - 1:len(seq) - 1] = torch.tensor(seq[len(p):])
        where = latent_steps + x.align - 1
        if where < 0:
            raise ConfigError("method=system15: with latent_steps=0 the answer line must have text before the "
                              "answer value to align at (e.g. 'A:')")
        s_align.append(where)
        t_align.append(len(p) + len(x.cot_ids) + x.align - 1)
    labels = answer.masked_fill(answer_mask == 0, IGNORE)
    return {"prompt_ids": prompt, "prompt_mask": prompt_mask, "answer_ids": answer, "answer_mask": answer_mask,
            "answer_labels": labels, "cot_ids": cot, "cot_mask": cot_mask, "cot_labels": cot_labels,
            "student_align": torch.tensor(s_align), "teacher_align": torch.tensor(t_align)}


__all__ = ["LatentExample", "System15", "collate_latent", "split_solution"]
