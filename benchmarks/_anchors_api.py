"""Reference clients for the API-throughput benchmark: a plain sequential httpx client and
bespokelabs-curator, both against the same OpenAI-compatible server.

Both send the same chat-completions body to `{base_url}/chat/completions`:

    {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
     "max_tokens": N, "temperature": T, "seed": S}

(the same `seed` in every request, as curator sends one fixed set of generation params), and
both count tokens from the server's `usage`, so they compare as tokens per second.

Curator lives in its own venv (its dependencies — litellm, openai, datasets, google-cloud-... —
are not retort's): `python3.11 -m venv /tmp/curator_venv && /tmp/curator_venv/bin/pip install
bespokelabs-curator`. `run_curator` runs it in a subprocess of that venv's python, with a fresh
cache directory per call, and times the generation call from inside the subprocess.

How curator is configured (read from bespokelabs-curator 0.1.31's source):

- backend="openai" (OpenAIOnlineRequestProcessor: aiohttp POST to base_url + "/chat/completions").
  Set explicitly: otherwise the backend is guessed from the model name through litellm, and an
  unknown name (a local path) goes to the litellm backend.
- backend_params: base_url, api_key (any non-empty string; else $OPENAI_API_KEY is required),
  max_concurrent_requests (an asyncio.Semaphore: the real concurrency knob),
  max_requests_per_minute / max_tokens_per_minute set huge: the defaults for an unknown server
  are 200 RPM and 100k TPM, buckets that start EMPTY and refill linearly, and each request is
  charged prompt + 4096 estimated output tokens (tiktoken cl100k count; 4096 for any model
  litellm does not know), i.e. ~24 requests/min with the defaults;
  invalid_finish_reasons=[]: by default finish_reason "length" counts as a failure and is
  retried (max_retries, default 10) — every max_tokens-capped completion would be resent;
  max_retries: 0 here, so a failure shows up instead of being hidden by resends.
- generation_params: copied verbatim into the request body (temperature, max_tokens, seed,
  logprobs, top_logprobs, ...); curator does not validate them.
- LLM subclass attribute `return_completions_object = True` hands parse() the whole response
  JSON (usage, finish_reason, choices[0].logprobs if the server sent them).
- At construction it POSTs {"model": M, "messages": []} once to read rate-limit headers
  (transformers serve answers 500; only headers are read, so that is harmless).
- Cache: $CURATOR_CACHE_DIR (default ~/.cache/curator), keyed by a hash of dataset + prompt
  function + model + generation params; CURATOR_DISABLE_CACHE=1 makes the key random.
- Network side effects to turn off: TELEMETRY_ENABLED=false (PostHog); the hosted viewer is off
  unless CURATOR_VIEWER=1. Curator calls tiktoken.get_encoding("cl100k_base") at construction,
  which downloads the file unless TIKTOKEN_CACHE_DIR points at a copy: the script points it at
  the one litellm ships (litellm/litellm_core_utils/tokenizers), so it works offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

CURATOR_PYTHON = "/tmp/curator_venv/bin/python"


def _body(model: str, prompt: str, *, max_tokens: int, temperature: float, seed: int,
          extra_body: dict | None = None) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": temperature, "seed": seed, **(extra_body or {})}


def run_sequential(base_url: str, model: str, prompts: list[str], *, max_tokens: int,
                   temperature: float, seed: int, extra_body: dict | None = None, timeout: float = 600.0) -> dict:
    """One request at a time over one keep-alive httpx connection; tokens from `usage`.
    `extra_body` (e.g. {"logprobs": True, "top_logprobs": 5}) is merged into every body."""
    url = base_url.rstrip("/") + "/chat/completions"
    prompt_tokens = completion_tokens = 0
    with httpx.Client(timeout=timeout, headers={"Authorization": "Bearer EMPTY"}) as client:
        t0 = time.perf_counter()
        for p in prompts:
            r = client.post(url, json=_body(model, p, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                            extra_body=extra_body))
            r.raise_for_status()
            usage = r.json()["usage"]
            prompt_tokens += usage["prompt_tokens"]
            completion_tokens += usage["completion_tokens"]
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "requests": len(prompts), "completion_tokens": completion_tokens,
            "prompt_tokens": prompt_tokens}


# Runs inside the curator venv. argv: config.json (prompts and settings), result.json.
_CURATOR_SCRIPT = r'''
import datetime, glob, json, os, sys, time
cfg = json.load(open(sys.argv[1]))
t_import = time.perf_counter()
if "TIKTOKEN_CACHE_DIR" not in os.environ:  # curator's tiktoken would download cl100k_base; litellm ships it
    import importlib.util
    os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(
        importlib.util.find_spec("litellm").submodule_search_locations[0], "litellm_core_utils", "tokenizers")
from bespokelabs import curator


class Gen(curator.LLM):
    return_completions_object = True  # parse() gets the whole response JSON

    def prompt(self, row):
        return row["prompt"]

    def parse(self, row, response):
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        return {"idx": row["idx"], "text": choice["message"]["content"], "finish_reason": choice.get("finish_reason"),
                "prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0),
                "has_logprobs": choice.get("logprobs") is not None}


t_setup = time.perf_counter()
llm = Gen(
    model_name=cfg["model"],
    backend="openai",
    generation_params={"max_tokens": cfg["max_tokens"], "temperature": cfg["temperature"], "seed": cfg["seed"],
                       **cfg["extra_body"]},
    backend_params={
        "base_url": cfg["base_url"],
        "api_key": "EMPTY",
        "max_concurrent_requests": cfg["concurrency"],
        "max_requests_per_minute": 10**9,
        "max_tokens_per_minute": 10**12,
        "invalid_finish_reasons": [],
        "max_retries": cfg["max_retries"],
        "request_timeout": cfg["request_timeout"],
    },
)
rows = [{"idx": i, "prompt": p} for i, p in enumerate(cfg["prompts"])]
t0 = time.perf_counter()
out = llm(rows)
seconds = time.perf_counter() - t0
data = out.dataset if hasattr(out, "dataset") else out
recs = data.to_list()

# Span of the HTTP requests themselves (first dispatch to last answer), from curator's own log.
span = None
stamps = []
for f in glob.glob(os.path.join(os.environ["CURATOR_CACHE_DIR"], "*", "responses_*.jsonl")):
    for line in open(f):
        r = json.loads(line)
        stamps.append((r["created_at"], r["finished_at"]))
if stamps:
    iso = datetime.datetime.fromisoformat
    span = (max(iso(b) for _, b in stamps) - min(iso(a) for a, _ in stamps)).total_seconds()

json.dump({"seconds": seconds, "requests": len(recs),
           "completion_tokens": sum(r["completion_tokens"] for r in recs),
           "prompt_tokens": sum(r["prompt_tokens"] for r in recs),
           "request_span_seconds": span, "setup_seconds": t0 - t_setup, "import_seconds": t_setup - t_import,
           "finish_reasons": sorted({str(r["finish_reason"]) for r in recs}),
           "any_logprobs": any(r["has_logprobs"] for r in recs),
           "curator_version": __import__("importlib.metadata").metadata.version("bespokelabs-curator")},
          open(sys.argv[2], "w"))
'''


def run_curator(base_url: str, model: str, prompts: list[str], *, concurrency: int, max_tokens: int,
                temperature: float, seed: int, extra_body: dict | None = None,
                python: str = CURATOR_PYTHON, max_retries: int = 0,
                request_timeout: int = 600, timeout: float = 3600.0) -> dict:
    """Curator (online "openai" backend) in a subprocess of its own venv, fresh cache per call.

    `seconds` is the `llm(rows)` call measured inside the subprocess (request files, HTTP, the
    output dataset); `request_span_seconds` the first request's dispatch to the last answer;
    `wall_seconds` the whole subprocess (interpreter start, imports, setup included). `extra_body`
    goes into curator's generation_params, which it copies into every request body; with
    {"logprobs": True, ...} `any_logprobs` says whether the answers carried choices[0].logprobs.
    """
    if not Path(python).exists():
        raise FileNotFoundError(f"{python} not found: python3.11 -m venv /tmp/curator_venv && "
                                "/tmp/curator_venv/bin/pip install bespokelabs-curator")
    with tempfile.TemporaryDirectory(prefix="curator_run_") as tmp:
        tmp = Path(tmp)
        (tmp / "script.py").write_text(_CURATOR_SCRIPT)
        (tmp / "config.json").write_text(json.dumps({
            "base_url": base_url, "model": model, "prompts": list(prompts), "concurrency": int(concurrency),
            "max_tokens": max_tokens, "temperature": temperature, "seed": seed, "extra_body": extra_body or {},
            "max_retries": max_retries,
            "request_timeout": request_timeout}))
        env = {**os.environ,
               "CURATOR_CACHE_DIR": str(tmp / "cache"), "CURATOR_DISABLE_CACHE": "1",
               "CURATOR_DISABLE_RICH_DISPLAY": "1", "TELEMETRY_ENABLED": "false", "CURATOR_VIEWER": "0",
               "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "EMPTY"),
               "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        t0 = time.perf_counter()
        proc = subprocess.run([python, str(tmp / "script.py"), str(tmp / "config.json"), str(tmp / "result.json")],
                              check=False, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not (tmp / "result.json").exists():
            raise RuntimeError(f"curator subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads((tmp / "result.json").read_text())
    result["wall_seconds"] = wall
    if result["requests"] != len(prompts):
        raise RuntimeError(f"curator returned {result['requests']} rows for {len(prompts)} prompts")
    return result
