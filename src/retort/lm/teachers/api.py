"""A teacher behind an OpenAI-compatible API (`teacher.name=openai:MODEL`, `teacher.api.*`).

What it can do (`Teacher` capabilities):
- `generate`: sample completions through `/chat/completions` (the server applies its chat template)
  or `/completions` (the prompt as given), keeping a reasoning server's `reasoning_content` apart
  from the answer, and the log-prob of every generated token with its `top_logprobs` when asked;
- `score`: the log-probs (and top-k) of given continuations, from the `prompt_logprobs` vLLM offers
  on `/completions`; a server without it is refused with a message naming what works instead.

Token ids come from the checked map of `retort.lm.teachers.tokens` (here: the probe of the server's
`/tokenize`, `check_tokenizer`); rows whose tokens do not map keep the text and the token strings
only (`Reply.tokens`), and token-level KD from them is refused downstream. Requests and replies are
`retort.lm.teachers.replies`; sending them (concurrency, rate limits, retries, balancing) is
`retort.lm.teachers.http`.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Callable, Iterable, Optional

from ...errors import ApiError, ConfigError
from ..tasks.base import with_system
from .base import Teacher
from .http import Failed, Malformed, Pool
from .replies import Job, Reply, parse_chat, parse_completion, request_id, request_seed
from .tokens import TokenMap, server_tokenizer

PROBE = "The quick brown fox: 12 + 7 = 19.\nWait, let me check: 19 - 7 = 12. So the answer is 19!"


class ApiTeacher(Teacher):
    """The teacher `openai:MODEL` on the server(s) of `cfg.api` (a `retort.config.ApiConfig`)."""

    kind = "OpenAI-compatible server"
    capabilities = frozenset({"generate", "score"})

    def __init__(self, cfg):
        check_key_env(cfg)
        self.cfg, self.api = cfg, cfg.api
        self.model_id = cfg.name.split(":", 1)[1]
        if not self.model_id:
            raise ConfigError("teacher.name=openai:MODEL needs the model's name as the server knows it")
        self.urls = [u.strip() for u in self.api.base_url.split(",") if u.strip()]
        Pool(self.urls)  # checks the URLs now, before any work
        tok = server_tokenizer(self.api.tokenizer) if self.api.tokenizer else None
        super().__init__(cfg.name, tok)
        self.tokens = TokenMap(tok) if tok is not None else None
        self.token_check = "no tokenizer given (teacher.api.tokenizer)" if tok is None else "not yet checked"

    def identity(self) -> str:
        return f"{self.name} at {self.api.base_url}"

    def pool(self, *, seed: int = 0, max_retries: Optional[int] = None) -> Pool:
        name = key_variable(self.api)
        key = os.environ[name] if name else None
        a = self.api
        return Pool(self.urls, key=key or None, max_in_flight=a.max_in_flight, rpm=a.rpm, tpm=a.tpm,
                    timeout_s=a.timeout_s, max_retries=a.max_retries if max_retries is None else max_retries,
                    backoff_s=a.backoff_s, balance=a.balance, seed=seed)

    # -- requests

    def body(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float, seed: int,
             stop: Optional[list] = None, topk: int = 0, endpoint: Optional[str] = None) -> tuple[str, dict]:
        a = self.api
        endpoint = endpoint or a.endpoint
        body = {"model": self.model_id, "max_tokens": max_tokens, "temperature": temperature, "seed": seed, "n": 1}
        if top_p < 1:
            body["top_p"] = top_p
        if stop:
            body["stop"] = list(stop)
        if endpoint == "chat":
            # teacher.api.system, else the task's system message the prompt carries (`tasks.Prompt`)
            system = a.system or getattr(prompt, "system", None)
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": str(prompt)}]
            turns = getattr(prompt, "messages", None)  # a whole conversation (`rollout.agent.Conversation`)
            if turns is not None:
                messages = list(turns)
                if getattr(prompt, "prefix", ""):  # a partial assistant turn, continued (vLLM's option)
                    messages.append({"role": "assistant", "content": prompt.prefix})
                    body.update(continue_final_message=True, add_generation_prompt=False)
            body["messages"] = messages
            if a.logprobs or topk:
                body["logprobs"] = True
                if topk:
                    body["top_logprobs"] = topk
            path = "/chat/completions"
        else:
            if getattr(prompt, "messages", None) is not None:
                raise ConfigError("a conversation (agent=code) goes to a server through its chat endpoint: set "
                                  "teacher.api.endpoint=chat")
            body["prompt"] = with_system(prompt)  # a task's system message as text: no template here
            if a.logprobs or topk:
                body["logprobs"] = topk or 0
            path = "/completions"
        body.update(a.extra_body or {})
        return path, body

    def parser(self, topk: int = 0, endpoint: Optional[str] = None) -> Callable[[dict], Reply]:
        want = bool(self.api.logprobs or topk)
        fn = parse_chat if (endpoint or self.api.endpoint) == "chat" else parse_completion
        return lambda d: fn(d, want)

    def estimate_tokens(self, prompt: str, max_tokens: int) -> float:
        return len(prompt) / 3 + max_tokens  # before the server's count: ~3 characters a token, the cap

    async def check_tokenizer(self, pool: Pool) -> str:
        """Compare the server's /tokenize of a probe text with the local tokenizer's ids. Returns
        how the token map was checked; on a mismatch the map is dropped (rows keep strings only)."""
        if self.tokens is None or self.token_check != "not yet checked":
            return self.token_check
        want = self.tok_ids(PROBE)
        root = re.sub(r"/v1/?$", "", pool.urls[0])
        got = None
        for path, body in (("/tokenize", {"model": self.model_id, "prompt": PROBE, "add_special_tokens": False}),
                           ("/tokenize", {"content": PROBE, "add_special": False}),
                           ("/extras/tokenize", {"input": PROBE})):
            toks = (await pool.probe(root + path, body) or {}).get("tokens")
            if isinstance(toks, list) and all(isinstance(t, int) for t in toks):
                got = toks
                break
        if got is None:
            self.token_check = "by bytes (the server has no /tokenize): each answer's tokens must spell its text"
        elif got != want:
            self.token_check = (f"MISMATCH: the server's /tokenize splits a probe into {len(got)} ids, "
                                f"{self.api.tokenizer} into {len(want)} (first differing at "
                                f"{next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))})")
            self.tokens = None
        else:
            self.token_check = "by the server's /tokenize and by bytes"
        return self.token_check

    def tok_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def run(self, jobs: Iterable[Job], on_reply: Callable, *, pool: Pool, max_tokens: int,
                  temperature: float, top_p: float, stop=None, topk: int = 0, breaker: int = 0,
                  endpoint: Optional[str] = None) -> None:
        """Send every job (the first one alone: a server that refuses it stops the run before the
        others go), call `on_reply(job, Reply | Failed)` as each answers; it may return a follow-up
        Job (a retry). Stops issuing after `breaker` requests in a row failed for good (a dead
        server) or at the first 401/403/404, raising ApiError with what happened."""
        parse = self.parser(topk, endpoint)
        breaker = breaker or pool.max_in_flight + 8

        async def one(job: Job):
            path, body = self.body(job.prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                   seed=job.seed, stop=stop, topk=topk, endpoint=endpoint)
            try:
                reply, url = await pool.post(path, body, parse, tokens=self.estimate_tokens(job.prompt, max_tokens),
                                             request_id=request_id(job),
                                             usage=lambda r: r.prompt_tokens + r.completion_tokens)
                reply.url = url
                return job, reply
            except Failed as f:
                return job, f

        it = iter(jobs)
        limit = 2 * pool.max_in_flight  # tasks waiting out a backoff hold no request slot
        pending: set = set()
        fails = answered = 0
        first = next(it, None)
        if first is None:
            return
        queue = [first]
        started = False
        try:
            while True:
                while queue or (started and len(pending) < limit):
                    job = queue.pop() if queue else next(it, None)
                    if job is None:
                        break
                    pending.add(asyncio.create_task(one(job)))
                    if not started:
                        break
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                started = True
                for task in done:
                    job, res = task.result()
                    if isinstance(res, Failed):
                        fails += 1
                        if res.final and res.kind in ("http 401", "http 403", "http 404"):
                            raise ApiError(f"{self.name}: the server refused a request ({res}); check "
                                           f"teacher.name, teacher.api.base_url and {_key_said(self.api)}")
                        if res.final and not answered:
                            # nothing has worked yet: a request the server refuses as it is (400, 422)
                            # is the config's fault, not this prompt's; stop before sending the rest
                            raise ApiError(f"{self.name}: the server refused the first request ({res}); check "
                                           "teacher.api.endpoint, teacher.api.extra_body and the sampling options "
                                           "it supports")
                        if fails >= breaker:
                            raise ApiError(f"{self.name}: {fails} requests in a row failed for good, the last: {res}")
                    else:
                        fails = 0
                        answered += 1
                    follow = on_reply(job, res)
                    if follow is not None:
                        queue.append(follow)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    # -- the Teacher interface

    def generate(self, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, num_samples: int = 1, seed: int = 0, stop=None, scores=None,
                 endpoint: Optional[str] = None, **_) -> list:
        """`num_samples` completions of each prompt (`retort.lm.rollout.generate.Completion`s);
        token ids only when the token map holds (else []), with `scores=K` the server's top-K.
        `endpoint` overrides teacher.api.endpoint (e.g. "completions" to continue a given text)."""
        from ..rollout.generate import Completion

        topk = int(scores or 0)
        out: list[list] = [[None] * num_samples for _ in prompts]
        errors: list = []

        def on_reply(job, res):
            i, j = map(int, job.key.split("/"))
            if isinstance(res, Failed):
                errors.append(res)
                return None
            ids = self.tokens.ids(res) if self.tokens is not None else None
            c = Completion(text=res.text, token_ids=ids or [], finish_reason=res.finish_reason)
            if topk and ids is not None:
                c.scores = self.scored(res, ids, topk)
            out[i][j] = c
            return None

        async def main():
            async with self.pool(seed=seed) as pool:
                await self.check_tokenizer(pool)
                jobs = (Job(f"{i}/{j}", p, request_seed(seed, i, j)) for i, p in enumerate(prompts)
                        for j in range(num_samples))
                await self.run(jobs, on_reply, pool=pool, max_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, stop=stop, topk=topk, endpoint=endpoint)

        asyncio.run(main())
        if errors:
            raise ApiError(f"{self.name}: {len(errors)} of {len(prompts) * num_samples} requests failed, "
                           f"e.g. {errors[0]}")
        return out

    def scored(self, reply: Reply, ids: list[int], topk: int):
        """A reply's log-probs and top-k as `Scored` (the alternatives that map to ids; each position
        cut to the same k, the rest of the mass in the tail)."""
        import math

        from ..rollout.score import Scored

        rows = []
        for t in reply.tokens[:len(ids)]:
            alts = {}
            for a in t.top:
                i = self.tokens.id(a)
                if i is not None and i not in alts:
                    alts[i] = a.logprob
            rows.append(sorted(alts.items(), key=lambda kv: -kv[1])[:topk])
        k = min([len(r) for r in rows] or [0])
        sc = Scored([t.logprob for t in reply.tokens[:len(ids)]])
        sc.topk_ids = [[i for i, _ in r[:k]] for r in rows]
        sc.topk_logprobs = [[v for _, v in r[:k]] for r in rows]
        sc.topk_tail = []
        for r in sc.topk_logprobs:
            rest = 1.0 - sum(math.exp(v) for v in r)
            sc.topk_tail.append(math.log(rest) if rest > 1e-12 else float("-inf"))
        return sc

    def score(self, prompt_ids, completion_ids, *, topk: int = 0, **_):
        """Log-probs of given continuations from vLLM's `prompt_logprobs` (token ids sent as the
        prompt, one token generated and ignored). Needs the checked token map."""
        from ..rollout.score import Scored

        if self.tokens is None:
            raise ApiError(f"{self.name}: scoring given tokens needs teacher.api.tokenizer, the served model's "
                           f"tokenizer, checked against the server ({self.token_check})")
        out: list = [None] * len(prompt_ids)
        errors: list = []

        def parse(d):
            plp = d["choices"][0].get("prompt_logprobs")
            if plp is None:
                raise ApiError(f"{self.name}: the server gave no prompt_logprobs (vLLM offers them); this teacher "
                               "cannot score given continuations: make traces with sampling.topk and train from "
                               "teacher.name=traces:DIR")
            return plp

        async def main():
            async with self.pool() as pool:
                check = await self.check_tokenizer(pool)
                if self.tokens is None:
                    raise ApiError(f"{self.name}: the served tokenizer differs from {self.api.tokenizer}: {check}")

                async def one(i, retries=None):
                    p, c = list(prompt_ids[i]), list(completion_ids[i])
                    body = {"model": self.model_id, "prompt": p + c, "max_tokens": 1, "temperature": 0.0,
                            "prompt_logprobs": max(topk, 0)}
                    try:
                        plp, _ = await pool.post("/completions", body, parse, tokens=len(p) + len(c) + 1,
                                                 max_retries=retries)
                    except Failed as f:
                        errors.append(f)
                        return
                    lps, ids, vals = [], [], []
                    for pos, tok in enumerate(c):
                        entry = {int(k): v for k, v in (plp[len(p) + pos] or {}).items()}
                        if tok not in entry:
                            raise Malformed(f"prompt_logprobs lack the given token at position {len(p) + pos}")
                        lps.append(float(entry[tok]["logprob"]))
                        if topk:
                            ranked = sorted(entry.items(), key=lambda kv: -float(kv[1]["logprob"]))[:topk]
                            ids.append([k for k, _ in ranked])
                            vals.append([float(v["logprob"]) for _, v in ranked])
                    sc = Scored(lps)
                    if topk:
                        k = min([len(r) for r in ids] or [0])
                        sc.topk_ids = [r[:k] for r in ids]
                        sc.topk_logprobs = [r[:k] for r in vals]
                    out[i] = sc

                if prompt_ids:
                    await one(0, min(1, self.api.max_retries))  # alone first: a server that cannot says so once
                    if errors:
                        return
                await asyncio.gather(*(one(i) for i in range(1, len(prompt_ids))))

        asyncio.run(main())
        if errors:
            raise ApiError(f"{self.name}: scoring given tokens failed ({len(errors)} of {len(prompt_ids)} requests, e.g. "
                           f"{errors[0]}); it needs a server that takes token ids as the prompt and returns "
                           "prompt_logprobs (vLLM does). Otherwise make traces with sampling.topk and train from "
                           "teacher.name=traces:DIR")
        return out


def check_key_env(cfg) -> None:
    """`teacher.api.key_env` names a variable that is set, the default, or nothing
    (`retort.lm.config.check_key_env`; its value is never repeated: it may be the key itself)."""
    from ..config import check_key_env as check

    check(cfg.api.key_env)


def key_variable(api) -> Optional[str]:
    """The name of the variable the key is read from, when it is set (what a manifest may record)."""
    return api.key_env if api.key_env and api.key_env in os.environ else None


def _key_said(api) -> str:
    """Which key went with the requests, for a refusal (the name of its variable, never its value)."""
    name = key_variable(api)
    if name is not None:
        return f"the key in ${name}"
    if api.key_env:
        return f"that no key was sent (${api.key_env} is not set)"
    return "that no key was sent (teacher.api.key_env is empty)"


__all__ = ["PROBE", "ApiTeacher", "check_key_env", "key_variable"]
