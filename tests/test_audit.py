"""retort.audit's arithmetic on known answers: exposure by exact rank, the skew-normal estimate, the
membership-inference AUC and low-FPR TPR, and the canary corpus writer (`retort audit canaries`)
with its refusals."""

import json
import math

import numpy as np
import pytest

from retort.audit import (
    CanaryFormat,
    exposures,
    loss_attack,
    read_manifest,
    reference_attack,
    write_corpus,
)
from retort.audit.exposure import estimated_exposure, exact_ranks
from retort.audit.mia import attack_metrics
from retort.cli import main
from retort.errors import ConfigError, DataError


def test_the_candidate_space_is_enumerated_in_order():
    fmt = CanaryFormat("pin {secret}", 2, "ab")
    assert fmt.size == 4 and [fmt.secret(i) for i in range(4)] == ["aa", "ab", "ba", "bb"]
    assert all(fmt.index(fmt.secret(i)) == i for i in range(4))
    assert [t for b in fmt.batches(3) for t in b] == ["pin aa", "pin ab", "pin ba", "pin bb"]


def test_exact_rank_counts_every_strictly_likelier_candidate():
    fmt = CanaryFormat("x {secret}", 3)  # 1000 candidates
    # log-perplexity = the secret read as a number: "000" is the likeliest, "999" the least
    lp = lambda texts: [float(t[2:]) for t in texts]
    got = exact_ranks(fmt, ["000", "417", "999"], lp, batch_size=64)
    assert [got[s]["rank"] for s in ("000", "417", "999")] == [1, 418, 1000]
    assert got["000"]["exposure"] == pytest.approx(math.log2(1000))
    assert got["999"]["exposure"] == pytest.approx(0.0)
    assert got["417"]["exposure"] == pytest.approx(math.log2(1000) - math.log2(418))


def test_ties_go_to_the_secret():
    fmt = CanaryFormat("x {secret}", 2)
    got = exact_ranks(fmt, ["42"], lambda texts: [0.0] * len(texts))
    assert got["42"]["rank"] == 1 and got["42"]["ties"] == 99


def test_the_skew_normal_estimate_agrees_with_the_exact_rank_on_a_smooth_space():
    fmt = CanaryFormat("x {secret}", 4)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=fmt.size)
    lp = lambda texts: [noise[int(t[2:])] for t in texts]
    secret = fmt.secret(int(np.argsort(noise)[20]))  # rank 21 of 10,000
    exact = exact_ranks(fmt, [secret], lp)[secret]
    est = estimated_exposure(fmt, [secret], lp, n_samples=3000, seed=1)[secret]
    assert exact["rank"] == 21 and est["method"] == "skewnorm"
    assert abs(est["exposure"] - exact["exposure"]) < 1.0
    # `exposures` switches to the estimate past max_exact
    assert exposures(fmt, [secret], lp, max_exact=100, n_samples=500)[secret]["method"] == "skewnorm"
    assert exposures(fmt, [secret], lp)[secret]["method"] == "exact"


@pytest.mark.parametrize("fmt,msg", [("no slot here", "exactly one {secret} slot, found 0"),
                                     ("{secret} and {secret}", "found 2"),
                                     ("a {name} is {secret}", "braces other than")])
def test_a_canary_format_without_one_slot_is_refused(fmt, msg):
    with pytest.raises(ConfigError, match=msg.replace("{", r"\{").replace("}", r"\}")):
        CanaryFormat(fmt, 3)


def test_mia_auc_on_known_cases():
    perfect = loss_attack([0.1, 0.2, 0.3], [1.0, 2.0])
    assert perfect["auc"] == 1.0 and perfect["advantage"] == 1.0
    assert perfect["tpr@fpr=0.001"] is None and perfect["tpr@fpr=0.01"] is None  # 2 non-members: unmeasurable
    inverted = loss_attack([1.0, 2.0], [0.1, 0.2])
    assert inverted["auc"] == 0.0
    # one pair out of four in the wrong order
    assert loss_attack([0.1, 0.5], [0.3, 0.9])["auc"] == pytest.approx(0.75)


def test_mia_auc_is_chance_on_disjoint_data_and_high_when_overfit():
    rng = np.random.default_rng(0)
    same = loss_attack(rng.gamma(2.0, 1.0, 5000), rng.gamma(2.0, 1.0, 5000))
    assert abs(same["auc"] - 0.5) < 0.03 and same["tpr@fpr=0.01"] < 0.05
    overfit = loss_attack(rng.gamma(2.0, 0.2, 5000), rng.gamma(2.0, 1.0, 5000))
    assert overfit["auc"] > 0.9 and overfit["tpr@fpr=0.01"] > 0.1 and overfit["tpr@fpr=0.001"] is not None


def test_tpr_at_low_fpr_reads_the_roc_curve():
    # 1000 non-members at 1..1000, members: 5 scores above every non-member, 95 below
    m = attack_metrics([2000.0] * 5 + [0.0] * 95, list(np.arange(1.0, 1001.0)))
    assert m["tpr@fpr=0.001"] == pytest.approx(0.05) and m["tpr@fpr=0.01"] == pytest.approx(0.05)


def test_the_reference_attack_removes_per_row_difficulty():
    rng = np.random.default_rng(1)
    hard_m, hard_n = rng.gamma(1.0, 2.0, 2000), rng.gamma(1.0, 2.0, 2000)  # each row's difficulty
    target_m, target_n = hard_m * 0.8, hard_n  # members 20% easier for the target than for anyone
    ref_m, ref_n = hard_m, hard_n             # a reference model never saw either side
    plain = loss_attack(target_m, target_n)["auc"]
    calibrated = reference_attack(target_m, target_n, ref_m, ref_n)["auc"]
    assert calibrated > 0.95 > plain > 0.5


def test_mia_refuses_an_empty_side_and_non_finite_losses():
    with pytest.raises(DataError, match="no non-member rows"):
        loss_attack([0.1], [])
    with pytest.raises(DataError, match="not finite"):
        loss_attack([0.1, float("nan")], [0.2])


def test_the_corpus_writer_inserts_each_canary_as_often_as_recorded(tmp_path):
    src = tmp_path / "notes.jsonl"
    src.write_text("".join(json.dumps({"prompt": "p", "text": f"note {i}"}) + "\n" for i in range(50)))
    out = tmp_path / "private.jsonl"
    assert main(["audit", "canaries", "--format", "my account number is {secret}", "--length", "6",
                 "--repeats", "1,5,20", "--per-repeat", "2", "--controls", "3", "--into", str(src),
                 "--out", str(out), "--row", '{"prompt": "Write the note."}', "--seed", "7"]) == 0
    fmt, canaries = read_manifest(str(out) + ".canaries.json")
    assert fmt.size == 10 ** 6 and len(canaries) == 9 and len({c["secret"] for c in canaries}) == 9
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [r["text"] for r in rows]
    assert len(rows) == 50 + 2 * (1 + 5 + 20)
    assert [t for t in texts if t.startswith("note")] == [f"note {i}" for i in range(50)]  # order kept
    for c in canaries:
        assert texts.count(fmt.text(c["secret"])) == c["repeats"]
    assert sorted(c["repeats"] for c in canaries) == [0, 0, 0, 1, 1, 5, 5, 20, 20]
    assert all(r["prompt"] == "Write the note." for r in rows if not r["text"].startswith("note"))


def test_the_corpus_writer_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "c.txt"
    assert main(["audit", "canaries", "--format", "no slot", "--length", "3", "--out", str(out)]) == 2
    assert "exactly one {secret} slot" in capsys.readouterr().err
    assert main(["audit", "canaries", "--format", "pin {secret}", "--length", "1", "--repeats", "1,5",
                 "--per-repeat", "6", "--out", str(out)]) == 2
    assert "the space holds 10 secrets" in capsys.readouterr().err
    assert main(["audit", "canaries", "--format", "pin {secret}", "--length", "3", "--repeats", "0",
                 "--out", str(out)]) == 2
    assert "--repeats 0" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "c.txt.canaries.json").exists()
    mine = tmp_path / "mine.txt"
    mine.write_text("keep me\n")
    assert main(["audit", "canaries", "--format", "pin {secret}", "--length", "3", "--out", str(mine)]) == 2
    assert "exists" in capsys.readouterr().err and mine.read_text() == "keep me\n"


def test_a_manifest_is_checked_when_read(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"kind": "retort-canaries", "format": "pin {secret}", "length": 3,
                               "canaries": [{"secret": "12a", "repeats": 1}]}))
    with pytest.raises(ConfigError, match="'12a': expected 3 symbols"):
        read_manifest(str(bad))
    bad.write_text("{}")
    with pytest.raises(DataError, match="not a canary manifest"):
        read_manifest(str(bad))


def test_write_corpus_without_a_source_holds_the_canaries_only(tmp_path):
    man = write_corpus(str(tmp_path / "c.txt"), CanaryFormat("pin {secret}", 4), repeats=[3], controls=0)
    lines = (tmp_path / "c.txt").read_text().splitlines()
    assert lines == [f"pin {man['canaries'][0]['secret']}"] * 3


def test_the_python_api_writes_a_canary_corpus(tmp_path):
    import retort

    man = retort.canaries(str(tmp_path / "c.txt"), "pin {secret}", 4, repeats=[2], controls=1, seed=3)
    assert man["manifest"] == str(tmp_path / "c.txt.canaries.json") and man["records"] == 2
    assert read_manifest(man["manifest"])[1] == man["canaries"]
