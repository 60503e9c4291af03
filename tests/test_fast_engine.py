"""The fast rollout engine: greedy tokens equal transformers' generate (left padding, grouped-query
attention, attention bias), seeded sampling, top-p, and the fallback to generate."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from retort.lm.config import ModelConfig
from retort.lm.models import load_model
from retort.lm.rollout import fast
from retort.lm.rollout.generate import generate_ids


def _prompts(n=9, seed=0, vocab=100):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, vocab, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _gqa_model(kind):
    _, tok = load_model(ModelConfig(name="preset:nano"))
    torch.manual_seed(4)
    common = dict(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = (LlamaForCausalLM(LlamaConfig(**common)) if kind == "gqa"
             else Qwen2ForCausalLM(Qwen2Config(**common)))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6)  # peaked distributions: greedy ties are unlikely
    return model.eval(), tok


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("kind", ["student", "gqa", "qwen2_bias"])
def test_greedy_tokens_equal_transformers_generate(kind, fold, monkeypatch):
    if kind == "student":
        model, tok = load_model(ModelConfig(name="preset:student"), seed=3)
    else:
        model, tok = _gqa_model(kind)
    model.eval()
    assert fast.supports(model)
    prompts = _prompts(vocab=len(tok))
    # rotate_half folded into the q/k projection (the default for small models) or computed
    sample = fast.sample
    monkeypatch.setattr(fast, "sample", lambda *a, **k: sample(*a, **k, fold_rotary=fold))
    hf = generate_ids(model, tok, prompts, max_new_tokens=20, engine="hf", batch_size=9)
    ours = generate_ids(model, tok, prompts, max_new_tokens=20, engine="fast", batch_size=9)
    for a, b in zip(hf, ours):
        assert a[0].token_ids == b[0].token_ids and a[0].finish_reason == b[0].finish_reason


@pytest.mark.parametrize("kind", ["gqa", "qwen2_bias"])
def test_sampling_in_bf16_is_a_bf16_copy_of_the_model(kind):
    """`dtype=bfloat16` on an fp32 model: the same tokens and log-probs as the model cast to bf16
    (rounded weights, activations and cache), not the fp32 model's; the model itself is untouched."""
    import copy

    _, tok = load_model(ModelConfig(name="preset:nano"))
    torch.manual_seed(5)
    common = {"vocab_size": len(tok), "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 128,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    model = (LlamaForCausalLM(LlamaConfig(**common)) if kind == "gqa" else Qwen2ForCausalLM(Qwen2Config(**common)))
    model.eval()
    half = copy.deepcopy(model).to(torch.bfloat16)
    # as from_pretrained(dtype=bfloat16) leaves it: the rotary inverse frequencies stay float32
    half.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq.clone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = _prompts(vocab=len(tok))
    kw = {"max_new_tokens": 10, "eos_ids": {2}, "pad_id": 0, "temperature": 1.0, "scores": 0}
    cast = fast.sample(model, prompts, **kw, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    ref = fast.sample(half, prompts, **kw, generator=torch.Generator().manual_seed(1))
    full = fast.sample(model, prompts, **kw, generator=torch.Generator().manual_seed(1))
    assert [s for s, _ in cast] == [s for s, _ in ref]
    assert [sc.logprobs for _, sc in cast] == [sc.logprobs for _, sc in ref]
    assert [sc.logprobs for _, sc in cast] != [sc.logprobs for _, sc in full]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="fast-engine option"):
        generate_ids(model, tok, prompts, max_new_tokens=4, engine="hf", dtype=torch.bfloat16)


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    prompts = _prompts(6, vocab=len(tok))
    a = generate_ids(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=5, engine="fast")
    b = generate_ids(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=5, engine="fast")
    c = generate_ids(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=6, engine="fast")
    assert [x[0].token_ids for x in a] == [x[0].token_ids for x in b]
    assert [x[0].token_ids for x in a] != [x[0].token_ids for x in c]
    # a tiny top-p keeps only the most likely token: sampling becomes greedy
    greedy = generate_ids(model, tok, prompts, max_new_tokens=12, engine="fast")
    nucleus = generate_ids(model, tok, prompts, max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=5, engine="fast")
    assert [x[0].token_ids for x in greedy] == [x[0].token_ids for x in nucleus]


def test_stop_strings_and_other_architectures_use_generate():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    with pytest.raises(ValueError, match="no stop strings"):
        generate_ids(model, tok, _prompts(2), max_new_tokens=4, stop=["\n"], engine="fast")
    out = generate_ids(model, tok, _prompts(2), max_new_tokens=4, stop=["\n"], engine="auto")  # falls back
    assert len(out) == 2
    from transformers import GPT2Config, GPT2LMHeadModel

    assert not fast.supports(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)))


class _FakeEngineModel:
    """Stands for the torch module inside a vLLM worker: `load_weights` takes (name, tensor) pairs."""

    def __init__(self):
        self.loaded = []

    def load_weights(self, weights):
        self.loaded.append({name: t.clone() for name, t in weights})
        return set(self.loaded[-1])


class _FakeLLM:
    """Only vLLM's public `LLM.apply_model(func)`: run `func` on the model in each worker, one result per
    worker. `__slots__` keeps any private engine attribute (llm_engine, ...) from being reached."""

    __slots__ = ("_models", "calls")

    def __init__(self, *models):
        self._models = models
        self.calls = 0

    def apply_model(self, func):
        self.calls += 1
        return [func(m) for m in self._models]


def test_vllm_weight_sync_pushes_current_weights_once_per_step():
    from retort.lm.rollout.vllm_engine import VLLMEngine

    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    workers = (_FakeEngineModel(), _FakeEngineModel())  # tensor parallel: every worker gets every pair
    llm = _FakeLLM(*workers)
    engine = VLLMEngine(model, tok, llm=llm)
    assert llm.calls == 1 and not any(w.loaded for w in workers)  # the API probe at build time pushes nothing
    assert engine.sync(model, 0) and not engine.sync(model, 0)  # one push per weight version
    assert llm.calls == 2 and engine.sync.pushes == 1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # tied embeddings: lm_head is not pushed (vLLM ties it itself); everything else is, by HF name, as is
    assert model.config.tie_word_embeddings
    for w in workers:
        (first,) = w.loaded
        assert set(first) == set(state) - {"lm_head.weight"}
        assert all(torch.equal(first[k], state[k]) for k in first)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert engine.sync(model, 1) and not engine.sync(model, 1)
    assert engine.sync.pushes == 2
    for w in workers:
        assert len(w.loaded) == 2
        for name, t in w.loaded[1].items():
            assert torch.equal(t, model.state_dict()[name])  # the weights after the step, not the first ones
            assert not torch.equal(t, state[name])


def test_vllm_engine_without_the_public_weight_api_says_so():
    from retort.errors import ModelError
    from retort.lm.rollout.vllm_engine import MIN_VLLM, VLLMEngine

    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)

    class OldLLM:  # vLLM 0.7-0.9.0: LLM.apply_model exists but cannot reach the V1 engine's model
        def apply_model(self, func):
            raise AttributeError("'LLMEngine' object has no attribute 'model_executor'")

    class NoLoader:
        pass

    for llm, match in [(object(), f"no LLM.apply_model.*vllm>={MIN_VLLM}"),
                       (OldLLM(), f"does not work.*vllm>={MIN_VLLM}"),
                       (_FakeLLM(NoLoader()), "no load_weights"),
                       (_FakeLLM(), "no load_weights")]:
        with pytest.raises(ModelError, match=match):
            VLLMEngine(model, tok, llm=llm)


@pytest.mark.parametrize("topk", [0, 5])
def test_scores_kept_while_sampling_equal_the_teacher_forced_pass(topk):
    """`retort traces` takes the teacher's log-probs (and top-k) from the sampling pass; they must be
    what `score` computes in one teacher-forced forward, EOS step included for stopped samples."""
    from retort.lm.rollout.score import score

    model, tok = load_model(ModelConfig(name="preset:student"), seed=3)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] += 0.3 * model.model.norm.weight.sign()  # some samples stop
    prompts = _prompts(vocab=len(tok))
    outs = generate_ids(model, tok, prompts, max_new_tokens=16, temperature=1.0, seed=2, engine="fast", scores=topk)
    assert any(o[0].finish_reason == "stop" for o in outs)
    eos = [tok.eos_token_id] if topk else []
    want = score(model, prompts, [o[0].token_ids + (eos if o[0].finish_reason == "stop" else []) for o in outs],
                 topk=topk)
    for o, w in zip(outs, want):
        got = o[0].scores
        n = len(o[0].token_ids)
        assert got.logprobs[:n] == pytest.approx(w.logprobs[:n], abs=1e-4)
        if topk:
            assert len(got.topk_ids) == len(w.topk_ids)
            assert got.topk_ids == w.topk_ids
            assert torch.allclose(torch.tensor(got.topk_logprobs), torch.tensor(w.topk_logprobs), atol=1e-4)
            assert torch.allclose(torch.tensor(got.topk_tail), torch.tensor(w.topk_tail), atol=1e-4)
    hf = generate_ids(model, tok, prompts, max_new_tokens=4, engine="hf", scores=topk)
    assert all(o[0].scores is None for o in hf)  # only the fast engine keeps them; traces then score


def _tiny_gemma3(tok, window=4):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(5)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=window,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], query_pre_attn_scalar=24,
        final_logit_softcapping=30.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Gemma's norms start at zero weight: give them some; larger projections, so that every
            # part of the block (the MLP's activation included) moves the greedy tokens
            p.add_(torch.randn_like(p) * 0.5) if "norm" in name else p.mul_(6)
    return model


@pytest.mark.parametrize("window", [4, 64])
def test_gemma3_greedy_tokens_equal_transformers_generate(window):
    """Gemma 3 (the packaged gemma-3-270m's family): q/k norms, four norms per block, sliding-window
    layers (a window of 4 is shorter than most prompts here, so it cuts in prefill and decode) with
    their own rotary table, the final logit soft-cap."""
    _, tok = load_model(ModelConfig(name="preset:nano"))
    model = _tiny_gemma3(tok, window)
    assert model.config.model_type == "gemma3_text" and fast.supports(model)
    prompts = _prompts(vocab=len(tok))
    hf = generate_ids(model, tok, prompts, max_new_tokens=16, engine="hf", batch_size=9)
    ours = generate_ids(model, tok, prompts, max_new_tokens=16, engine="fast", batch_size=9)
    assert [c[0].token_ids for c in ours] == [c[0].token_ids for c in hf]
    assert len({tuple(c[0].token_ids) for c in hf}) > 3  # not one repeated answer


def test_an_uncovered_architecture_is_named_and_auto_runs_it_with_generate():
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = load_model(ModelConfig(name="preset:nano"))
    torch.manual_seed(5)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), bos_token_id=1,
                                       eos_token_id=2, pad_token_id=0)).eval()
    assert fast.why_not(model) == "architecture 'gpt2' is not Llama-shaped; the fast engine runs " \
                                  "gemma3_text, llama, mistral, qwen2"
    prompts = _prompts(3, vocab=len(tok))
    with pytest.raises(ValueError, match="the fast engine needs a Llama-family or Gemma 3 model.*'gpt2' is not Llama-shaped.*"
                                         "use engine=hf"):
        generate_ids(model, tok, prompts, max_new_tokens=4, engine="fast")
    auto = generate_ids(model, tok, prompts, max_new_tokens=6, engine="auto")
    hf = generate_ids(model, tok, prompts, max_new_tokens=6, engine="hf")
    assert [c[0].token_ids for c in auto] == [c[0].token_ids for c in hf]
    # the families retort ships, as `retort models` shows them
    for family in ("llama", "qwen2", "gemma3_text"):
        assert fast.engine_for(family).startswith("fast")
    assert fast.engine_for("gemma3").startswith("hf (transformers' generate; the fast engine does not cover gemma3: "
                                                "the multimodal")


def test_samples_of_one_prompt_share_its_prefill_and_score_as_the_teacher_forced_pass():
    """N samples of a prompt are prefilled once and the KV cache copied to the N rows (grouped-query
    attention, left padding, prompts of several lengths): each sample's kept log-probs and top-k
    must still be what a teacher-forced forward of that sample gives, and greedy rows of a repeated
    prompt equal transformers' generate."""
    from retort.lm.rollout.score import score

    model, tok = _gqa_model("qwen2_bias")
    prompts = _prompts(n=5, seed=1, vocab=len(tok))
    calls = []
    sample = fast.sample

    def fast_sample(m, ps, **k):
        calls.append(len({tuple(p) for p in ps}))
        return sample(m, ps, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast, "sample", fast_sample)
        outs = generate_ids(model, tok, prompts, max_new_tokens=10, temperature=1.0, num_samples=3, seed=1,
                            engine="fast", scores=4, batch_size=15)
    assert calls == [5]  # one batch of 15 rows, 5 distinct prompts
    flat = [(p, c) for p, o in zip(prompts, outs) for c in o]
    assert len({tuple(c.token_ids) for _, c in flat}) > len(prompts)  # the samples of a prompt differ
    want = score(model, [p for p, _ in flat], [c.token_ids for _, c in flat], topk=4)
    for (_, c), w in zip(flat, want):
        assert c.scores.logprobs[:len(c.token_ids)] == pytest.approx(w.logprobs, abs=1e-4)
        assert c.scores.topk_ids[:len(c.token_ids)] == w.topk_ids
    repeated = [p for p in prompts for _ in range(2)]
    hf = generate_ids(model, tok, repeated, max_new_tokens=12, engine="hf", batch_size=10)
    ours = generate_ids(model, tok, repeated, max_new_tokens=12, engine="fast", batch_size=10)
    assert [o[0].token_ids for o in ours] == [o[0].token_ids for o in hf]


@pytest.mark.parametrize("vocab", [6, 64 * 3, 1024 * 2 + 64 * 5, 1000])  # one block, several, a tail, padded
def test_the_sampler_draws_each_token_with_its_probability_and_never_a_zero_one(vocab):
    g = torch.Generator().manual_seed(vocab)
    probs = torch.zeros(vocab)
    # a few tokens carry the mass (unnormalised, as after top-p), spread over the blocks; the rest 0
    live = torch.randperm(vocab, generator=g)[:6]
    probs[live] = torch.tensor([0.5, 0.2, 0.3, 0.1, 0.4, 0.5]) * 7
    probs[live[-1]] = 0.0
    n = 40_000
    draws = fast._draw(probs.expand(n, -1).contiguous(), g)
    freq = torch.bincount(draws, minlength=vocab).double() / n
    want = probs.double() / probs.sum()
    # 5 standard errors of a frequency at n = 40k is at most 0.0125
    assert torch.allclose(freq, want, atol=0.0125)
    assert freq[want == 0].sum() == 0
