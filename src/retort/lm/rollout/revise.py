"""A model that rewrites or continues text for `retort curate`'s shortening (`Reviser`): a trace
set's teacher (a local model, or its server) or another local model with the same tokenizer. A
local model's continuation can be kept from opening its next step with given words (`OpeningBan`,
a logits processor: Retro-Search suppresses its thought-switch keywords where a revision's next
step opens); a server's completion is drawn again instead (the caller's `tries`), since a logit
bias would hold for the whole answer."""

from __future__ import annotations

from ...errors import DataError
from ..data.collate import encode_prompt, render_prompt
from .generate import generate_ids


class Reviser:
    """The trace set `src`'s teacher (its server `api`, else the local model its manifest names, checked
    against the weights hash the traces were made with), or `name` (a local model with the set's
    tokenizer), as a rewriter and continuer of text."""

    def __init__(self, src: str, manifest: dict, *, name: str | None = None, api=None):
        import torch

        from ..config import ModelConfig
        from ..data.hashes import tokenizer_sha256, weights_sha256
        from ..models import load_model

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        teacher = manifest["params"]["teacher"]
        self.api = None if name else api
        self.model = None
        self.is_teacher = name is None
        self.name = name or teacher["name"]
        if self.api is not None:
            self.tok = self.api.tokenizer
            return
        self.model, self.tok = load_model(ModelConfig(name=name) if name else ModelConfig(**teacher))
        if name is None:
            want = manifest["params"].get("teacher_weights_sha256")
            if want and weights_sha256(self.model) != want:
                raise DataError(f"{src}: its teacher ({teacher['name']}) has changed since the traces were made "
                                "(weights hash differs); pass the model to use with --reviser")
        elif manifest.get("tokenizer_sha256") and tokenizer_sha256(self.tok) != manifest["tokenizer_sha256"]:
            raise DataError(f"curate --reviser {name}: its tokenizer differs from the one {src} was made with; "
                            "a reviser writes rows in the set's tokens, so it needs the same tokenizer")
        self.model.to(self.device).eval()
        self._banned: dict = {}

    def scorer(self):
        """The model that re-scores rewritten rows: the local teacher itself, else none."""
        return self.model if self.is_teacher else None

    def ask(self, texts: list[str], *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
            batch_size: int) -> list:
        """One reply to each text, sent as the user's message (a local model's chat template, or
        the text after BOS for a model without one; a server's configured endpoint)."""
        if self.api is not None:
            return [o[0] for o in self.api.generate(texts, max_new_tokens=max_new_tokens, temperature=temperature,
                                                   top_p=top_p, seed=seed)]
        return [o[0] for o in self._sample([encode_prompt(self.tok, t) for t in texts], max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, seed=seed, n=1,
                                           batch_size=batch_size)]

    def continue_(self, prompts: list[str], prefixes: list[str], *, n: int, ban=(), max_new_tokens: int,
                  temperature: float, top_p: float, seed: int, batch_size: int) -> list[list]:
        """`n` continuations of each prompt's answer begun with its prefix. `ban`: keywords a local
        model may not open its next step with (their first tokens masked while it has written only
        whitespace)."""
        if self.api is not None:
            return self.api.generate([render_prompt(self.tok, p) + x for p, x in zip(prompts, prefixes)],
                                     max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     num_samples=n, seed=seed, endpoint="completions")
        ids = [encode_prompt(self.tok, p) + self.tok(x, add_special_tokens=False)["input_ids"]
               for p, x in zip(prompts, prefixes)]
        return self._sample(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            n=n, batch_size=batch_size, ban=tuple(ban))

    def _banned_ids(self, ban: tuple):
        """(ids a keyword can open with, ids that print whitespace or nothing) over the vocabulary."""
        if ban not in self._banned:
            special = set(self.tok.all_special_ids) - {self.tok.eos_token_id}
            opening, space = [], list(special)  # a special token prints nothing: the step has not begun
            for i in range(len(self.tok)):
                if i in special or i == self.tok.eos_token_id:
                    continue
                piece = self.tok.decode([i])
                bare = piece.lstrip()
                if not bare:
                    if piece:
                        space.append(i)
                elif any(k.startswith(bare) or bare.startswith(k) for k in ban):
                    opening.append(i)
            self._banned[ban] = (opening, space)
        return self._banned[ban]

    def _sample(self, encoded, *, max_new_tokens, temperature, top_p, seed, n, batch_size, ban=()) -> list[list]:
        import torch

        processors = None
        if ban:
            opening, space = self._banned_ids(ban)
            vocab = self.model.get_output_embeddings().weight.shape[0]
            ban_mask = torch.zeros(vocab, dtype=torch.bool, device=self.device)
            ban_mask[[i for i in opening if i < vocab]] = True
            space_ids = torch.tensor(space or [-1], device=self.device)
            processors = lambda width: [OpeningBan(width, ban_mask, space_ids)]  # noqa: E731
        return generate_ids(self.model, self.tok, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, num_samples=n, batch_size=batch_size, seed=seed, processors=processors)


def OpeningBan(start: int, ban_mask, space_ids):
    """A transformers logits processor: while a row has generated only whitespace tokens (ids in
    `space_ids`) since position `start`, the tokens of `ban_mask` get -inf (no keyword opens the
    next step)."""
    import torch
    from transformers import LogitsProcessor

    class _Opening(LogitsProcessor):
        def __call__(self, input_ids, scores):
            made = input_ids[:, start:]
            still_open = torch.isin(made, space_ids).all(dim=1) if made.shape[1] else \
                torch.ones(len(made), dtype=torch.bool, device=made.device)
            return scores.masked_fill(still_open[:, None] & ban_mask[None, :scores.shape[1]], float("-inf"))

    return _Opening()


__all__ = ["OpeningBan", "Reviser"]
