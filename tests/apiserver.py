"""A loopback OpenAI-compatible server for fault injection (stdlib only; not a model).

It answers POST /v1/chat/completions and /v1/completions deterministically: the text is a function
of the prompt and the request's `seed` (`answer_text`), so a test knows what each request got.
With `logprobs`, one token per *character* of the text (retort's built-in character tokenizer
splits the same way, so a token map holds) with `top_logprobs` alternatives. GET /v1/models and
/health answer; POST /tokenize answers when given a tokenizer (or wrong ids, to break the check).

Faults come from a plan applied to completion requests in the order they arrive:
    faults={"ok": 3, "429": 2, "500": 1, "timeout": 1, "truncated": 1, "garbage": 1}
(the first 3 answered, the next two 429 with Retry-After: 0, ...; a count of 10**9 is "always"),
`every={"500": 3}` (every third request), `fail_400_containing="..."` (a final 400 for a prompt
holding that text), `die_after=n` (stop accepting connections after n requests), `length_if`
(a seed -> bool rule: finish_reason "length"), `reasoning=True` (a `reasoning_content`).

Every request is logged as one JSON object (in `server.log`, and as a line of `log_path`): path,
X-Request-ID, Authorization, seed, prompt, time, the fault applied, and for an answer its text,
finish_reason and usage.

    with ApiServer(faults={"500": 2}) as s:
        ... teacher.api.base_url=s.url ...

    python tests/apiserver.py --port 0 --log FILE [--delay S]   # prints the port on its first line
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALTERNATIVES = "0123456789abcdefghijklmnopqrstuvwxyz"
FAULTS = ("ok", "401", "429", "500", "timeout", "truncated", "garbage")


def answer_text(prompt: str, seed) -> str:
    """What the server answers: the stripped prompt reversed, its first 6 characters, and the seed's
    last digit (7 characters of printable ASCII)."""
    return prompt.strip()[::-1][:6].ljust(6, "_") + str(int(seed or 0) % 10)


def reasoning_text(prompt: str, seed) -> str:
    return f"thinking about {prompt.strip()} with seed {seed}"


def token_entries(text: str, top: int) -> list[dict]:
    """Chat `logprobs.content`: one entry per character, the chosen one first among its `top`
    alternatives (distinct characters, decreasing log-probs)."""
    out = []
    for ch in text:
        alts = [{"token": ch, "logprob": -0.1, "bytes": list(ch.encode())}]
        for i, a in enumerate(c for c in ALTERNATIVES if c != ch):
            if len(alts) >= top:
                break
            alts.append({"token": a, "logprob": -3.0 - i, "bytes": list(a.encode())})
        out.append({"token": ch, "logprob": -0.1, "bytes": list(ch.encode()), "top_logprobs": alts[:top]})
    return out


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's 5 drops the SYNs of a burst: a 1 s retransmit, a "timeout"
    daemon_threads = True
    block_on_close = False


class ApiServer:
    def __init__(self, *, faults: dict | None = None, every: dict | None = None,
                 fail_400_containing: str | None = None, die_after: int | None = None,
                 length_if: Callable[[int], bool] | None = None, reasoning: bool = False,
                 tokenizer=None, tokenize_offset: int = 0, delay: float = 0.0, timeout_sleep: float = 2.0,
                 port: int = 0, log_path: str | None = None,
                 prompt_logprobs: Callable[[list, int], list] | None = None):
        for k in list(faults or {}) + list(every or {}):
            if k not in FAULTS:
                raise ValueError(f"unknown fault {k!r}; faults: {', '.join(FAULTS)}")
        self.plan = [k for k, n in (faults or {}).items() for _ in range(min(n, 10**6))]
        self.every = dict(every or {})
        self.fail_400_containing, self.die_after = fail_400_containing, die_after
        self.length_if, self.reasoning = length_if, reasoning
        self.tokenizer, self.tokenize_offset = tokenizer, tokenize_offset
        self.delay, self.timeout_sleep = delay, timeout_sleep
        self.log: list[dict] = []
        self.log_path = log_path
        # vLLM's `prompt_logprobs` on /v1/completions with a token-id prompt: (ids, k) -> the list vLLM
        # returns (None, then per position {str(id): {"logprob", "rank", "decoded_token"}}); a test
        # gives a function of a model it holds (no server here offers it: vLLM needs a GPU build)
        self.prompt_logprobs = prompt_logprobs
        self._lock = threading.Lock()
        self._count = 0          # completion requests so far
        self._requests = 0       # all requests so far
        self._dead = False
        self.httpd = _Server(("127.0.0.1", port), _handler(self))
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def completions(self) -> list[dict]:
        """The log entries of completion requests (what a run's `last_run.requests` counts)."""
        return [e for e in self.log if e["path"].endswith("completions")]

    def answered(self) -> list[dict]:
        return [e for e in self.completions() if e.get("usage") is not None]

    # -- life

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._dead:
            self._dead = True
            self.httpd.shutdown()
            self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- bookkeeping

    def _fault(self) -> tuple[int, str | None]:
        with self._lock:
            i = self._count
            self._count += 1
        fault = self.plan[i] if i < len(self.plan) else None
        for kind, k in self.every.items():
            if fault is None and (i + 1) % k == 0:
                fault = kind
        return i, (None if fault == "ok" else fault)

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.log.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")
                    fh.flush()

    def _counted(self) -> bool:
        """Count a request; False once the server is to be dead (`die_after` requests were answered)."""
        with self._lock:
            self._requests += 1
            n = self._requests
        if self.die_after is not None and n >= self.die_after and not self._dead:
            # stop from another thread: shutdown() waits for serve_forever to return
            threading.Thread(target=self.stop, daemon=True).start()
        return self.die_after is None or n <= self.die_after



def wait_until_up(url: str, proc, seconds: float = 120) -> bool:
    """Poll `url` (a server's health route) until it answers 200: True; False once `proc` (the
    server's process) has exited or `seconds` have passed."""
    import urllib.error
    import urllib.request

    deadline = time.time() + seconds
    while proc.poll() is None and time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False

def _prompt(body: dict) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"] if m.get("role") == "user")
    return str(body.get("prompt", ""))


def _handler(server: ApiServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, payload, *, headers: dict | None = None, length: int | None = None):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:
                pass

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw or b"{}")
            except ValueError:
                return {}

        def _dead(self) -> bool:
            if server._dead:  # a dead server's open keep-alive connections answer nothing either
                self.close_connection = True
            return server._dead

        def do_GET(self):
            if self._dead():
                return
            server._counted()
            server._record({"path": self.path, "t": time.time(), "auth": self.headers.get("Authorization")})
            if self.path in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            body = self._body()
            if self._dead():
                return
            path = self.path
            entry = {"path": path, "t": time.time(), "rid": self.headers.get("X-Request-ID"),
                     "auth": self.headers.get("Authorization"), "seed": body.get("seed"), "prompt": _prompt(body),
                     "body": body}
            if path == "/tokenize":
                server._counted()
                server._record(entry)
                if server.tokenizer is None:
                    return self._send(404, {"error": {"message": "no tokenizer"}})
                text = body.get("prompt", body.get("content", ""))
                ids = server.tokenizer(text, add_special_tokens=False)["input_ids"]
                return self._send(200, {"tokens": [i + server.tokenize_offset for i in ids]})
            if path not in ("/v1/chat/completions", "/v1/completions"):
                server._counted()
                server._record(entry)
                return self._send(404, {"error": {"message": f"no route {path}"}})
            _, fault = server._fault()
            entry["fault"] = fault
            if server.fail_400_containing and server.fail_400_containing in entry["prompt"]:
                entry["fault"] = fault = "400"
            if not server._counted():  # dead: requests already received are not answered either
                entry["fault"] = "dead"
                server._record(entry)
                self.close_connection = True
                return
            server._record(entry)
            if server.delay:
                time.sleep(server.delay)
            if fault == "429":
                return self._send(429, {"error": {"message": "rate limited"}}, headers={"Retry-After": "0"})
            if fault == "500":
                return self._send(500, {"error": {"message": "internal error"}})
            if fault == "401":
                return self._send(401, {"error": {"message": "invalid key"}})
            if fault == "400":
                return self._send(400, {"error": {"message": "this prompt is refused"}})
            if fault == "timeout":
                time.sleep(server.timeout_sleep)
                self.close_connection = True
                return self._send(500, {"error": {"message": "too late"}})
            if fault == "garbage":
                return self._send(200, b"<html>this is not JSON")
            if path == "/v1/completions" and server.prompt_logprobs is not None and "prompt_logprobs" in body \
                    and isinstance(body.get("prompt"), list):
                ids = [int(t) for t in body["prompt"]]
                plp = server.prompt_logprobs(ids, int(body["prompt_logprobs"] or 0))
                usage = {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}
                return self._send(200, {"id": "cmpl-p", "object": "text_completion", "model": body.get("model"),
                                        "choices": [{"index": 0, "text": "x", "finish_reason": "length",
                                                     "logprobs": None, "prompt_logprobs": plp}], "usage": usage})
            text = answer_text(entry["prompt"], body.get("seed"))
            finish = "length" if server.length_if is not None and server.length_if(int(body.get("seed") or 0)) \
                else "stop"
            usage = {"prompt_tokens": len(entry["prompt"]), "completion_tokens": len(text),
                     "total_tokens": len(entry["prompt"]) + len(text)}
            if path == "/v1/chat/completions":
                msg = {"role": "assistant", "content": text}
                if server.reasoning:
                    msg["reasoning_content"] = reasoning_text(entry["prompt"], body.get("seed"))
                choice = {"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": token_entries(text, int(body.get("top_logprobs") or 0))}
                payload = {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                           "choices": [choice], "usage": usage}
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                if body.get("logprobs") is not None:
                    k = int(body.get("logprobs") or 0)
                    ents = token_entries(text, k)
                    choice["logprobs"] = {"tokens": [e["token"] for e in ents],
                                          "token_logprobs": [e["logprob"] for e in ents],
                                          "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]}
                                                           for e in ents]}
                payload = {"id": "cmpl-1", "object": "text_completion", "model": body.get("model"),
                           "choices": [choice], "usage": usage}
            data = json.dumps(payload).encode()
            if fault == "truncated":
                self.close_connection = True
                return self._send(200, data[:len(data) // 2], length=len(data))
            entry.update(text=text, finish=finish, usage=usage)  # the logged dict is the same object
            if server.log_path:
                server._record({"answer_of": entry["rid"], "seed": entry["seed"], "prompt": entry["prompt"],
                                "text": text, "finish": finish, "usage": usage, "t": time.time(),
                                "path": "answer"})
            self._send(200, data)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", default=None, help="append one JSON line per request to this file")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = ap.parse_args()
    server = ApiServer(port=args.port, log_path=args.log, delay=args.delay)
    print(server.port, flush=True)
    try:
        server.httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
