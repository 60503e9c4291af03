"""The rule-based PII detector behind `method=swing` on language models (`retort.lm.data.pii`):
what each rule finds, plain text left alone, the rule spec's refusals, and the score per token of a
real tokenizer (the built-in character-level one, and SmolLM2's byte-level BPE where installed)."""

import pytest

from retort.lm.data.pii import DEFAULT_RULES, char_scores, parse_rules, spans, token_pieces, token_scores

ALL = parse_rules(DEFAULT_RULES)


@pytest.mark.parametrize("text, rule, found", [
    ("Write to jane.doe+kd@mail.example.org today.", "email", "jane.doe+kd@mail.example.org"),
    ("Call 555-123-4567 after six.", "phone", "555-123-4567"),
    ("Ring +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
    ("or (555) 123 4567 at night", "phone", "(555) 123 4567"),
    ("my pin is 1 2 3 4 5 6", "number", "1 2 3 4 5 6"),
    ("account 12345678, sort code", "number", "12345678"),
    ("the patient, seen by Okafor, left", "name", "Okafor"),
    ("Alice paid the bill.", "name", "Alice"),  # a listed first name, at a sentence's start
    ("The note says Dr Venkataraman called.", "name", "Venkataraman"),
])
def test_each_rule_finds_its_kind(text, rule, found):
    assert found in [text[a:b] for a, b, r in spans(text, ALL) if r == rule]


@pytest.mark.parametrize("text", [
    "The cat sat on the mat. It was happy.",
    "What is the sum of the two numbers? Add them up and answer.",
    "Monday was rainy. Then the sun came out.",
])
def test_plain_text_scores_zero(text):
    assert spans(text, ALL) == [] and set(char_scores(text, ALL)) == {0.0}


def test_short_numbers_are_digits_only_and_rules_can_be_left_out():
    text = "What is 12 + 7? Answer: 19"
    assert {r for _, _, r in spans(text, ALL)} == {"digit"}
    assert spans(text, parse_rules("email,phone,number,name")) == []
    scores = char_scores("Bob: 555-123-4567", parse_rules("phone:1,digit:0.25,name:0.5"))
    assert scores[:3] == [0.5] * 3 and scores[3:5] == [0.0, 0.0] and scores[5:] == [1.0] * 12


@pytest.mark.parametrize("spec, message", [
    ("email,ssn", "unknown rule 'ssn'; rules: email, phone, number, digit, name"),
    ("digit:2", "score '2' is not a number in [0, 1]"),
    ("name:high", "score 'high' is not a number in [0, 1]"),
])
def test_bad_rule_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_rules(spec)


def test_each_token_takes_the_highest_score_of_its_characters():
    from retort.lm.config import ModelConfig
    from retort.lm.models import load_model

    _, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    text = "pay 4321 9876 to Bob now"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    rho = token_scores(tok, ids, parse_rules("number,name:0.5"))
    by_char = char_scores("".join(pieces), parse_rules("number,name:0.5"))
    pos = 0
    for piece, r in zip(pieces, rho):
        assert r == max(by_char[pos:pos + len(piece)], default=0.0)
        pos += len(piece)
    assert max(rho) == 1.0 and 0.5 in rho and rho[0] == 0.0


def _sentencepiece_style_tokenizer():
    """A SentencePiece-style tokenizer (a space is `▁`, stripped at the start of a decode, as Llama's
    and Gemma's): one token per character, a few merged words."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁"] + [chr(c) for c in range(33, 127)]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [("▁", "B"), ("▁B", "o"), ("▁Bo", "b"), ("▁", "p"), ("▁p", "a"), ("▁pa", "y")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    core.normalizer = normalizers.Replace(" ", "▁")
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def test_a_tokenizer_that_strips_a_leading_space_keeps_word_boundaries():
    # decoded alone, "▁Bob" is "Bob": the pieces must keep its space, or "to Bob" would read "toBob"
    tok = _sentencepiece_style_tokenizer()
    text = "pay Bob 1234 5678 now"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert tok.decode(ids[3:4]) in ("Bob", " Bob") and " Bob" in pieces
    rho = token_scores(tok, ids, parse_rules("number,name:0.5"))
    assert [r for p, r in zip(pieces, rho) if p == " Bob"] == [0.5]
    assert [p for p, r in zip(pieces, rho) if r == 1.0] == list("1234 5678")


@pytest.mark.slow
def test_smollm2s_byte_level_bpe_pieces_and_scores():
    from transformers import AutoTokenizer

    from retort.lm.models.packaged import gguf_path

    try:
        path = gguf_path("smollm2-135m-instruct")
    except Exception as e:  # noqa: BLE001 (not installed here: the tokenizers above cover the logic)
        pytest.skip(f"SmolLM2 not available: {e}")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "Contact Maria at maria.lopez@example.com or 555-867-5309, thanks."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert "".join(pieces) == text
    rho = dict(zip(pieces, token_scores(tok, ids, ALL)))
    assert rho["Contact"] == rho[" thanks"] == rho[" at"] == 0.0 and rho[" Maria"] == 0.5
    assert rho["opez"] == rho["@"] == rho["example"] == 1.0 and rho["9"] == 1.0
