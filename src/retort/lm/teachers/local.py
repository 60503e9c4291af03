"""A teacher that is a model in this process (`LocalTeacher`): every capability."""

from __future__ import annotations

from .base import Teacher


class LocalTeacher(Teacher):
    """A model in this process: every capability. `model` is the frozen module itself."""

    kind = "local model"
    capabilities = frozenset({"generate", "score", "hidden", "score_stored"})

    def __init__(self, name: str, model, tokenizer):
        super().__init__(name, tokenizer)
        self.model = model

    def __call__(self, *args, **kw):
        """The model's forward: where code wants the model itself, the teacher runs as one."""
        return self.model(*args, **kw)

    def identity(self) -> str:
        from ..data.hashes import weights_sha256

        return weights_sha256(self.model)

    def generate(self, prompts, **kw):
        from ..rollout.generate import generate

        return generate(self.model, self.tokenizer, prompts, **kw)

    def score(self, prompt_ids, completion_ids, *, topk: int = 0, batch_size: int = 16):
        from ..rollout.score import score

        pad = self.tokenizer.pad_token_id or 0
        return score(self.model, prompt_ids, completion_ids, topk=topk, batch_size=batch_size, pad_id=pad)

    def hidden(self, batch):
        model = getattr(self.model, "module", self.model)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1], model.get_output_embeddings().weight


__all__ = ["LocalTeacher"]
