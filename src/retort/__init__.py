"""retort: distil a teacher into a smaller student: reasoning language models, classifiers and
few-step diffusion generators, behind one CLI and this Python API (`retort.api`):

    from retort import api
    summary = api.train(track="classify", task={"name": "digits"}, method="kd", out="runs/kd")
    results = api.evaluate(["kd=runs/kd/model"], track="classify", task={"name": "digits"})

`import retort` gives the API's functions too (`retort.evaluate`, `retort.teacher`, ...), except
`train`, `report` and `audit`: `retort.train`, `retort.report` and `retort.audit` are the packages of
the loop, the report and the privacy audits (`api.audit`; `retort.canaries` writes a canary corpus).

`retort.traces` and `retort.curate_traces` make and curate teacher traces for language models;
`retort.packaged_models()` lists the real models that load by name (`retort models`).
"""

__version__ = "0.1.0"

_API = ("train_config", "evaluate", "eval_config", "teacher", "teacher_config", "demo", "methods", "canaries")
_LM = {"traces": "retort.lm.api", "traces_config": "retort.lm.api", "curate_traces": "retort.lm.api",
       "packaged_models": "retort.lm.api"}

__all__ = ["api", *_API, *_LM]


def __getattr__(name):  # imported on first use: `import retort` stays light
    import importlib

    if name == "api":
        return importlib.import_module("retort.api")
    if name in _API:
        return getattr(importlib.import_module("retort.api"), name)
    if name in _LM:
        return getattr(importlib.import_module(_LM[name]), name)
    raise AttributeError(f"module 'retort' has no attribute {name!r}")
