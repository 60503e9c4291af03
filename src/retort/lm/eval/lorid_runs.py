"""The three runs `retort eval --lorid IR,KG,DR` names, opened as LoRID's reasoners: one base model,
loaded once, with the three runs' LoRA adapters (`RUN_DIR/adapter`) on it
(`retort.lm.models.adapters.Adapters`), and the KG/DR prompt templates their training rows were
written with (`retort curate --knowledge` records them in its sets' manifests).

Refused, each with one message naming the run: a path that is not a run, a run that trained every
weight (no adapter), a KG or DR run not trained on knowledge rows of its role, and three runs
whose bases differ (the student section, seed and context each run loaded its base with)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from ...errors import ConfigError, DataError
from ..data.traces import read_manifest
from ..models import load_model
from ..models.adapters import Adapters, check_adapter_dir
from .lorid import DR_TEMPLATE, KG_TEMPLATE, ROLES

CURATE_HINT = "make them with `retort curate TRACES --out DIR --knowledge` and train it on DIR/{role}"


def parse_spec(spec: str) -> dict:
    """"runs/ir,runs/kg,runs/dr" -> {"ir": ..., "kg": ..., "dr": ...}."""
    parts = [p.strip() for p in str(spec).split(",")]
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"--lorid {spec!r}: expected IR,KG,DR: three LoRA run directories (retort train "
                          "student.lora.r=R), in that order")
    return dict(zip(ROLES, parts))


def _run(role: str, path: str):
    from ...config import load_config
    from ..config import TrainRun

    where = f"--lorid: the {role.upper()} run {path}"
    if not (Path(path) / "config.yaml").is_file():
        raise ConfigError(f"{where} is not a retort run directory (no config.yaml)")
    run = load_config(TrainRun, str(Path(path) / "config.yaml"))
    if not run.student.lora.r:
        raise ConfigError(f"{where} trained every weight (student.lora.r=0); LoRID's reasoners are LoRA adapters "
                          "on one base: train it with student.lora.r=R")
    adapter = Path(path) / "adapter"
    if not adapter.is_dir():
        raise ConfigError(f"{where} has no adapter/ (a LoRA run writes it when it finishes; an unfinished run, or "
                          "one made before retort wrote it, has its adapter in its last ckpt/step-N/model: finish "
                          "or rerun it)")
    check_adapter_dir(adapter, where)
    knowledge = None
    if run.data.source == "traces" and run.data.traces:
        try:
            knowledge = read_manifest(run.data.traces)["params"].get("knowledge")
        except DataError:
            knowledge = None
    got = (knowledge or {}).get("role")
    if role != "ir" and got != role:
        trained = f"data.traces={run.data.traces}" if run.data.source == "traces" else f"data.source={run.data.source}"
        what = f"the {got.upper()} rows" if got else "no knowledge rows"
        raise DataError(f"{where} was trained on {what} ({trained}); the {role.upper()} adapter learns the "
                        f"{role} rows of a knowledge set: " + CURATE_HINT.format(role=role))
    if role == "ir" and got not in (None, "ir"):
        raise DataError(f"{where} was trained on the {got.upper()} rows of {run.data.traces}; IR learns the "
                        "question -> rationale rows (DIR/ir, or the traces themselves)")
    return run, adapter, knowledge


def _base_key(run) -> dict:
    student = asdict(replace(run.student))
    student.pop("lora", None)
    student.pop("prune_check", None)
    return {"student": student, "seed": run.seed, "max_len": max(512, run.data.max_len)}


def open_lorid(spec: str, *, device=None):
    """(Adapters holding ir/kg/dr on one base, tokenizer, {"kg": template, "dr": template}, {role: run dir},
    the IR run's task config)."""
    import torch

    paths = parse_spec(spec)
    opened = {role: _run(role, p) for role, p in paths.items()}
    keys = {role: _base_key(run) for role, (run, _, _) in opened.items()}
    if keys["ir"] != keys["kg"] or keys["ir"] != keys["dr"]:
        def say(k):
            return f"student.name={k['student']['name']}, seed={k['seed']}, context {k['max_len']}"
        diff = "; ".join(f"{r.upper()}: {say(k)}" for r, k in keys.items())
        raise ConfigError(f"--lorid: the three adapters must sit on one base, loaded alike; the runs differ ({diff}"
                          "; or another student.* key)")
    templates = {"kg": KG_TEMPLATE, "dr": DR_TEMPLATE}
    kg, dr = opened["kg"][2], opened["dr"][2]
    for key in ("kg", "dr"):
        a, b = kg.get(f"{key}_template", templates[key]), dr.get(f"{key}_template", templates[key])
        if a != b:
            raise DataError(f"--lorid: the KG and DR runs were trained on knowledge sets written with different "
                            f"{key.upper()} prompts; curate both from one `--knowledge` run")
        templates[key] = a
    run = opened["ir"][0]
    base, tok = load_model(run.student, seed=run.seed, max_len=max(512, run.data.max_len))
    base.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    adapters = Adapters(base, {role: adapter for role, (_, adapter, _) in opened.items()})
    return adapters, tok, templates, paths, run.task


__all__ = ["open_lorid", "parse_spec"]
