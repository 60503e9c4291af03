"""`retort audit` for language models: canary exposure over the whole candidate space and
membership inference by per-row loss (the arithmetic is `retort.audit`'s).

Each target is a run directory (its `model/`, and its config says which rows it trained on) or a
model name as `retort eval -m` takes it. Members are the run's own training rows (`data.source`
as the run read it: the task's solutions or answers, or its traces), non-members the task's test
split encoded the same way; or, for any model, `--members FILE --nonmembers FILE` (.txt: a record
a line, scored whole; .jsonl: a `text` field scored whole, or `prompt` with `completion`,
`solution` or `answer`, the completion scored given the prompt as training encodes it).

A row's loss is its mean next-token NLL over the scored tokens (what the training loss is per
row); a canary's log-perplexity is the summed NLL of every token of its text after the first (the
BOS of tokenizers that add one), as Carlini et al. define it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..losses.reduce import IGNORE
from .data.collate import Encoded, collate, encode_within


def is_run_dir(path) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "model").is_dir()


@torch.no_grad()
def nll_sums(model, rows: list[Encoded], *, batch_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL in nats, scored tokens) per row, over its label tokens."""
    model.eval()
    device = next(model.parameters()).device
    sums, counts = [], []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
        labels = batch["labels"][:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(logits.double().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                                reduction="none").view(labels.shape)
        sums.append((nll * (labels != IGNORE)).sum(-1).cpu().numpy())
        counts.append((labels != IGNORE).sum(-1).cpu().numpy())
    if not rows:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(sums), np.concatenate(counts)


def row_losses(model, tok, rows: list[Encoded], batch_size: int) -> np.ndarray:
    sums, counts = nll_sums(model, rows, batch_size=batch_size, pad_id=tok.pad_token_id or 0)
    return sums / np.maximum(counts, 1)


def text_row(tok, text: str) -> Encoded:
    """A text scored whole: every token after the first."""
    ids = tok(text, add_special_tokens=True)["input_ids"]
    return Encoded(list(ids), [IGNORE] + list(ids[1:]))


def log_perplexity_fn(model, tok, batch_size: int, prompt: str | None = None):
    """texts -> the summed NLL of each (Carlini et al.'s log-perplexity, nats); with `prompt`, of
    each as that prompt's completion (encoded as training encodes prompt + completion)."""
    from .data.collate import encode_examples

    pad = tok.pad_token_id or 0

    def fn(texts: list[str]) -> np.ndarray:
        if prompt is None:  # one batched tokenizer call: a sweep tokenizes up to 10**6 texts
            rows = [Encoded(list(ids), [IGNORE] + list(ids[1:]))
                    for ids in tok(list(texts), add_special_tokens=True)["input_ids"]]
        else:
            rows = encode_examples(tok, [prompt] * len(texts), list(texts))
        return nll_sums(model, rows, batch_size=batch_size, pad_id=pad)[0]
    return fn


def read_rows_file(path: str, tok, max_len: int) -> list[Encoded]:
    """A member / non-member file's rows, encoded (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file (expected .txt or .jsonl rows)")
    if p.suffix not in (".txt", ".jsonl"):
        raise DataError(f"{path}: expected a .txt (one record a line) or .jsonl file")
    rows: list[Encoded] = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".txt":
            rows.append(text_row(tok, line))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        if isinstance(row.get("text"), str):
            rows.append(text_row(tok, row["text"]))
            continue
        completion = next((row[k] for k in ("completion", "solution", "answer") if isinstance(row.get(k), str)), None)
        if not isinstance(row.get("prompt"), str) or completion is None:
            raise DataError(f"{path}:{lineno}: expected a string field 'text', or 'prompt' with 'completion', "
                            "'solution' or 'answer'")
        enc = encode_within(tok, [row["prompt"]], [completion], max_len)[0]
        if enc is not None:
            rows.append(enc)
    if not rows:
        raise DataError(f"{path}: no rows to score")
    return rows


def _dedupe(rows: list[Encoded]) -> list[Encoded]:
    seen, out = set(), []
    for r in rows:
        key = tuple(r.input_ids)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def run_rows(run_dir: Path, tok, n: int, seed: int) -> tuple[list[Encoded], list[Encoded], str, str]:
    """The rows a training run learnt from (members) and its task's test split (non-members)."""
    from ..config import load_config
    from .config import TrainRun
    from .methods.base import MethodContext
    from .methods.examples import data_examples
    from .tasks import get_task

    cfg = load_config(TrainRun, str(run_dir / "config.yaml"), [])
    task = get_task(cfg.task)
    if cfg.data.source == "traces":
        raise ConfigError(f"{run_dir}: trained on traces ({cfg.data.traces}), which have no held-out rows of the "
                          "same kind: pass --members FILE --nonmembers FILE")
    if getattr(task, "test_fraction", None) == 0:
        raise DataError(f"{run_dir}: no held-out rows: task.test_fraction=0 trained on the whole of "
                        f"{cfg.task.name}; pass --members FILE --nonmembers FILE")
    members = _dedupe(data_examples(MethodContext(run=cfg, task=task, tokenizer=tok)))
    got = task.count("test", n, seed)
    if got == 0:
        raise DataError(f"{run_dir}: no held-out rows: {task.describe_split('test')} is empty (for a file task, "
                        "task.test_fraction=0 trains on the whole file); pass --members FILE --nonmembers FILE")
    test = [ex for ex in task.examples("test", got, seed) if cfg.data.source == "answers" or ex.solution is not None]
    completions = [task.completion_of(ex.answer) if cfg.data.source == "answers" else ex.solution for ex in test]
    seen = {tuple(m.input_ids) for m in members}  # a row in both splits (a duplicate in a file) is a member
    nonmembers = [e for e in encode_within(tok, [ex.prompt for ex in test], completions, cfg.data.max_len)
                  if e and tuple(e.input_ids) not in seen]
    if not nonmembers:
        raise DataError(f"{run_dir}: no held-out rows: every row of {task.describe_split('test')} is a training row "
                        "too, or longer than data.max_len")
    what = f"data.source={cfg.data.source} of task {cfg.task.name}"
    return members, nonmembers, f"training rows ({what})", f"{task.describe_split('test')} ({what})"


def _sample(rows: list, n: int, seed: int) -> list:
    if len(rows) <= n:
        return rows
    idx = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return [rows[i] for i in idx]


def _teacher_of(run_dir: Path | None, label: str) -> str:
    import yaml

    if run_dir is None:
        raise ConfigError(f"--reference teacher: {label} is not a run directory, so it has no teacher; name a model")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    name = (cfg.get("teacher") or {}).get("name")
    if not name:
        raise ConfigError(f"--reference teacher: {run_dir}/config.yaml names no teacher")
    return name


def audit_models(run, targets: list, options: dict, console) -> dict:
    """label -> audit result (`retort.audit`) of each (label, name) target."""
    from ..audit import (
        canary_prompt,
        canary_result,
        exposures,
        loss_attack,
        read_manifest,
        reference_attack,
        run_privacy,
    )
    from ..progress import ProgressLines
    from .models import load_model

    opts = {"canaries": None, "members": None, "nonmembers": None, "reference": None, "n": 1000,
            "max_exact": 10 ** 6, "samples": 10 ** 5, "seed": 0, "batch_size": run.eval.batch_size, **options}
    if (opts["members"] is None) != (opts["nonmembers"] is None):
        raise ConfigError("--members and --nonmembers go together: membership inference needs training rows and "
                          "held-out rows of the same distribution")
    canaries = read_manifest(opts["canaries"]) if opts["canaries"] else None
    targets = targets or [(run.model.name, run.model.name)]
    results, ref_cache = {}, {}
    for label, name in targets:
        run_dir = Path(name) if is_run_dir(name) else None
        if run_dir is None and opts["members"] is None and canaries is None:  # before loading anything
            raise ConfigError(f"{label}: a model without its run directory: pass --members FILE --nonmembers FILE "
                              "(its training rows and held-out rows) and/or --canaries MANIFEST")
        model_name = str(run_dir / "model") if run_dir else name
        with console.status(f"loading {label}"):
            model, tok = load_model(replace(run.model, name=model_name), seed=opts["seed"])
        result: dict = {"model": model_name, "run_dir": str(run_dir) if run_dir else None, "track": "lm"}
        privacy = run_privacy(run_dir)
        result["epsilon"] = privacy.get("epsilon") if privacy else None
        if privacy:
            result["privacy"] = privacy
        if canaries is not None:
            fmt, items = canaries
            how = "exactly" if fmt.size <= opts["max_exact"] else f"by a skew-normal fit to {opts['samples']} samples"
            # not a terminal: a line every 30 s or 10% of the candidates (a 10**6 sweep is long on a CPU)
            lines = ProgressLines(console, f"exposure {label}", fmt.size, "candidates")
            with console.status(f"{label}: ranking {fmt.size:,} canary candidates {how}"):
                ranked = exposures(fmt, [c["secret"] for c in items],
                                   log_perplexity_fn(model, tok, opts["batch_size"], canary_prompt(opts["canaries"])),
                                   max_exact=opts["max_exact"], n_samples=opts["samples"], seed=opts["seed"],
                                   batch_size=opts["batch_size"], progress=lines.update if lines.enabled else None)
            result["canaries"] = {**canary_result(fmt, items, ranked), "prompt": canary_prompt(opts["canaries"])}
        mia_rows = None
        if opts["members"] is not None:
            max_len = max(512, getattr(getattr(model, "config", None), "max_position_embeddings", 512) or 512)
            mia_rows = (read_rows_file(opts["members"], tok, max_len), read_rows_file(opts["nonmembers"], tok, max_len),
                        opts["members"], opts["nonmembers"])
        elif run_dir is not None:
            mia_rows = run_rows(run_dir, tok, opts["n"], opts["seed"])
        if mia_rows is not None:
            members, nonmembers = _sample(mia_rows[0], opts["n"], opts["seed"]), _sample(mia_rows[1], opts["n"],
                                                                                      opts["seed"] + 1)
            with console.status(f"{label}: scoring {len(members)} members and {len(nonmembers)} non-members"):
                lm, ln = row_losses(model, tok, members, opts["batch_size"]), row_losses(model, tok, nonmembers,
                                                                                         opts["batch_size"])
            mia = {"members": mia_rows[2], "nonmembers": mia_rows[3], "loss": loss_attack(lm, ln), "reference": None,
                   "reference_model": None}
            if opts["reference"]:
                ref_name = _teacher_of(run_dir, label) if opts["reference"] == "teacher" else opts["reference"]
                if ref_name not in ref_cache:
                    with console.status(f"loading reference {ref_name}"):
                        ref_cache[ref_name] = load_model(replace(run.model, name=ref_name), seed=opts["seed"])
                ref, ref_tok = ref_cache[ref_name]
                if ref_tok.get_vocab() != tok.get_vocab():
                    raise ConfigError(f"--reference {ref_name}: its tokenizer differs from {label}'s; the reference "
                                      "attack compares the two models' losses on the same tokens")
                rm, rn = row_losses(ref, ref_tok, members, opts["batch_size"]), row_losses(ref, ref_tok, nonmembers,
                                                                                           opts["batch_size"])
                mia.update(reference=reference_attack(lm, ln, rm, rn), reference_model=ref_name)
            result["mia"] = mia
        results[label] = result
    return results
