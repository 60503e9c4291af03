"""Multi-turn trace rows: a conversation's loss mask follows the roles; single-turn rows read as before."""

import json

import pyarrow.parquet as pq
import pytest

from conftest import tiny_overrides
from retort.cli import main
from retort.lm.config import ModelConfig
from retort.lm.data.collate import IGNORE, encode_example, encode_messages
from retort.lm.data.traces import SCHEMA, TraceWriter, read_manifest, read_traces
from retort.errors import DataError
from retort.lm.models import load_model

CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CONVERSATION = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "call add(2,3)"},
                {"role": "tool", "content": "5"}, {"role": "assistant", "content": "A:5"}]


def _trained(enc, tok):
    return tok.decode([t for t in enc.labels if t != IGNORE])


def test_without_a_template_single_turn_is_unchanged_and_tool_turns_are_masked():
    _, tok = load_model(ModelConfig(name="preset:nano"))
    one = encode_messages(tok, CONVERSATION[:2])
    ref = encode_example(tok, "2+3?", "call add(2,3)")
    assert (one.input_ids, one.labels) == (ref.input_ids, ref.labels) and not one.multi_turn
    enc = encode_messages(tok, CONVERSATION)
    assert tok.decode(enc.input_ids, skip_special_tokens=True) == "2+3?call add(2,3)5\nA:5"
    assert _trained(enc, tok) == "call add(2,3)</s>A:5</s>" and enc.multi_turn


def test_with_a_chat_template_only_assistant_turns_are_trained():
    _, tok = load_model(ModelConfig(name="preset:nano"))
    tok.chat_template = CHATML
    enc = encode_messages(tok, [{"role": "system", "content": "be brief"}, *CONVERSATION])
    assert tok.decode(enc.input_ids) == ("<|system|>be brief</s><|user|>2+3?</s><|assistant|>call add(2,3)</s>"
                                         "<|tool|>5</s><|assistant|>A:5</s>")
    assert _trained(enc, tok) == "call add(2,3)</s>A:5</s>"  # headers, system, user and tool masked
    tok.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="does not render a conversation's prefix as its prefix"):
        encode_messages(tok, CONVERSATION)


def _trace_set(tmp_path, rows):
    out = tmp_path / "tr"
    params = {"teacher": {"name": "preset:nano"}, "sampling": {"topk": 0}}
    writer = TraceWriter(out, params, {"tokenizer_sha256": "x"}, {0: len(rows)})
    writer.write_shard(0, rows)
    writer.finish({})
    return out


def _row(i, **kw):
    row = {k: None for k in SCHEMA.names}
    row.update(prompt_id=f"p{i}", sample_idx=0, prompt="2+3?", completion="A:5", completion_ids=[], correct=True,
               finish_reason="stop", reference="5", n_tokens=3, completion_logprobs=[])
    row.update(kw)
    return row


def test_sft_trains_on_a_trace_set_mixing_single_and_multi_turn_rows(tmp_path, capsys):
    rows = [_row(i) for i in range(4)] + [_row(i, messages=json.dumps(CONVERSATION)) for i in range(4, 8)]
    traces = _trace_set(tmp_path, rows)
    assert read_traces(traces, columns=["messages"])["messages"].null_count == 4
    rc = main(["train", *tiny_overrides(tmp_path / "r", steps=2, **{"data.source": "traces",
                                                                    "data.traces": traces})])
    assert rc == 0, capsys.readouterr().err
    rc = main(["train", *tiny_overrides(tmp_path / "g", steps=1, **{"method": "gkd", "data.source": "traces",
                                                                    "data.traces": traces})])
    assert rc == 2 and "multi-turn rows" in capsys.readouterr().err
    bad = _trace_set(tmp_path / "b", [_row(0, messages='[{"role": "robot", "content": "hi"}]')])
    rc = main(["train", *tiny_overrides(tmp_path / "x", steps=1, **{"data.source": "traces", "data.traces": bad})])
    assert rc == 2 and "messages[0] must be" in capsys.readouterr().err


def test_shards_written_before_the_messages_column_still_read(tmp_path):
    traces = _trace_set(tmp_path, [_row(0)])
    shard = traces / "part-00000.parquet"
    old = pq.read_table(shard).drop_columns(["messages"])  # as a shard of an earlier retort
    pq.write_table(old, shard)
    manifest = read_manifest(traces)
    from retort.paths import sha256_file

    manifest["shards"]["0"]["sha256"] = sha256_file(shard)
    (traces / "manifest.json").write_text(json.dumps(manifest))
    t = read_traces(traces)
    assert t.column_names == SCHEMA.names and t["messages"].to_pylist() == [None]
