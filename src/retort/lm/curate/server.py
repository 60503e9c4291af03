"""The server a trace set sampled from, met again by a curate command that continues or rewrites
its traces (`--mixed-policy`, `--rewrite`, `--retro-search`, `--truncate-like`): rebuilt from the
manifest (`api_teacher`), where `--teacher-url` may say it has moved."""

from __future__ import annotations

import os

from ...errors import DataError


def api_teacher(src, manifest: dict, teacher_url, purpose: str = "mixed-policy continues student prefixes"):
    """The server of an API trace set (`openai:MODEL`), as its manifest names it (the identity keys
    of teacher.api, and where the server was, which `teacher_url` overrides); None for a local
    teacher. Continuing a student prefix needs the served model's tokenizer (its chat template
    renders the prompt the prefix follows)."""
    from ..config import DEFAULT_KEY_ENV, ApiConfig, TeacherConfig
    from ..teachers import ApiTeacher

    t = dict(manifest["params"]["teacher"])
    ident = t.pop("api", None)
    if not str(t.get("name", "")).startswith("openai:"):
        if teacher_url:
            raise DataError(f"curate --teacher-url: {src} was sampled from a local teacher ({t.get('name')})")
        return None
    server = manifest.get("api_server") or {}
    url = teacher_url or server.get("base_url")
    if not url:
        raise DataError(f"{src}: sampled from {t['name']}, but the manifest does not say where the server was; "
                        "give it with --teacher-url http://HOST:PORT/v1")
    if not (ident or {}).get("tokenizer"):
        raise DataError(f"{src}: sampled from {t['name']} without teacher.api.tokenizer; {purpose} as text after "
                        "the prompt rendered by the served model's chat template, and writes rows in its tokens, "
                        "so it needs that tokenizer (sample the set with teacher.api.tokenizer=...)")
    # the variable the key was read from (none recorded: the default's, as a new traces run reads it)
    key_env = server.get("key_env") or DEFAULT_KEY_ENV
    if key_env != DEFAULT_KEY_ENV and key_env not in os.environ:
        # not repeated: a manifest written before retort checked teacher.api.key_env may hold a key there
        raise DataError(f"{src}: the server's key was read from the variable its manifest names (api_server."
                        "key_env), which is not set here; export it (with the key) and run this again")
    cfg = TeacherConfig(**{k: v for k, v in t.items() if k in TeacherConfig.__dataclass_fields__},
                        api=ApiConfig(**ident, base_url=url, key_env=key_env))
    return ApiTeacher(cfg)


__all__ = ["api_teacher"]
