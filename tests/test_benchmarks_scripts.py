"""The benchmark scripts' bookkeeping, without running a benchmark: side-by-side arms alternate their
order across repetitions (the measurements are replaced by stand-ins that record the order they were
called in), and the diffusion teacher row counts one value per seed."""

from __future__ import annotations

import importlib
import itertools
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))

    def load(name):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


def test_api_traces_alternates_retort_and_curator(bench, monkeypatch, tmp_path):
    api, anchors = bench("api_traces"), bench("_anchors_api")
    calls = []

    def fake(client):
        def run(*args, **kw):
            calls.append((client, kw.get("concurrency", 1)))
            return {"seconds": 1.0, "completion_tokens": 10, "requests": 1}
        return run

    monkeypatch.setattr(api, "start_loopback", lambda delay: (None, "http://127.0.0.1:1"))
    monkeypatch.setattr(api, "stop", lambda proc: None)
    monkeypatch.setattr(api, "run_retort", fake("retort"))
    monkeypatch.setattr(anchors, "run_curator", fake("curator"))
    monkeypatch.setattr(anchors, "run_sequential", fake("sequential"))
    args = SimpleNamespace(servers=["latency"], delay=0.0, prompts_latency=4, reps=4, concurrency=[16, 64],
                           no_curator=False, no_sequential=False)
    rows = api.throughput(tmp_path, args)["latency"]["rows"]
    timed = calls[1:]  # the first call warms the server
    firsts = {}
    for rep in range(args.reps):
        for c in args.concurrency:
            pair = [r["client"] for r in rows if r["rep"] == rep and r["concurrency"] == c]
            assert sorted(pair) == ["curator", "retort"]
            firsts.setdefault(c, []).append(pair[0])
    for c, first in firsts.items():  # each arm goes first in half of the repetitions, never twice running
        assert first.count("retort") == first.count("curator") == 2, (c, first)
        assert all(a != b for a, b in itertools.pairwise(first)), (c, first)
    seq = [i for i, (client, _) in enumerate(timed) if client == "sequential"]
    assert len(seq) == args.reps and seq[0] == 0 and seq[1] == len(timed) // 2 - 1  # first, then last
    summary = api.summarise({"latency": {"rows": rows}})["latency"]
    assert summary["summary"]["retort|64"]["tokens_per_s"] == [10.0] * args.reps
    assert [v["verdict"] for v in summary["verdicts"]] == ["unresolved", "unresolved"]  # equal: no difference


def test_threads_alternates_which_thread_count_goes_first(bench, monkeypatch, tmp_path):
    threads = bench("threads")
    calls = []
    monkeypatch.setattr(threads, "step_time", lambda preset, b, n, s, t, root: calls.append((preset, t)) or 0.1 * t)
    rows = threads.measure(tmp_path, 2) + threads.measure(tmp_path, 2, len(threads.CASES))
    firsts = [calls[i][1] for i in range(0, len(calls), 2)]
    assert firsts == [1, 2] * len(threads.CASES)  # idle then busy: alternating throughout
    assert all(r["s_per_step_1"] == 0.1 and r["s_per_step_2"] == 0.2 for r in rows)  # each count in its column


def test_diffuse_teacher_row_is_one_value_per_seed(bench):
    diffuse = bench("diffuse")
    teacher = [{"swd_ratio": v, "precision": 0.9} for v in (1.0, 2.0, 4.0)]  # the seeds' teacher draws
    arms = {f"arm{a}|1": {"per_seed": [{"swd_ratio": 0.5, "teacher": t} for t in teacher]} for a in range(4)}
    row = diffuse.teacher_row(arms, "points")
    assert row["swd_ratio"] == (pytest.approx(7 / 3), pytest.approx(statistics.stdev([1.0, 2.0, 4.0])))
    assert len(row["per_seed"]) == 3
    # the results file: every teacher row's std is the std over its per-seed values (never over arms x seeds)
    results = json.loads((ROOT / "benchmarks" / "results" / "diffuse.json").read_text())
    for name, part in results.items():
        if name in ("verdicts", "features", "hybrid"):
            continue
        per_seed = [p["fd" if part["kind"] == "images" else "swd_ratio"] for p in part["teacher"]["per_seed"]]
        mean, std = part["teacher"]["fd" if part["kind"] == "images" else "swd_ratio"]
        assert mean == pytest.approx(statistics.mean(per_seed)), name
        assert len(per_seed) == len(next(iter(part["arms"].values()))["per_seed"]), name
        assert std == pytest.approx(statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0), name
    hybrid_teacher = results["hybrid"]["digits"]["arms"]["teacher"]
    assert len(hybrid_teacher["per_seed"]) == 3


def test_offpolicy_summarise_only_rebuilds_rows_and_verdict(bench, monkeypatch, tmp_path):
    offpolicy = bench("offpolicy")
    sft, kd = [0.984, 0.970, 0.784], [0.996, 0.948, 0.996]  # kd below sft in one seed, within 2 se

    def run(acc, t):
        return {"accuracy": acc, "by_difficulty": {"2": 1.0, "6": acc - 0.1}, "mean_tokens": 27.0, "train_time_s": t}

    made = {"seeds": [0, 1, 2], "runs": {str(s): {offpolicy.SFT: run(sft[s], 100.0 + s), offpolicy.KD: run(kd[s], 150.0)}
                                         for s in range(3)}}
    path = tmp_path / "offpolicy.json"
    path.write_text(json.dumps(made))
    monkeypatch.setattr(sys, "argv", ["offpolicy.py", "--summarise-only", "--json", str(path)])
    offpolicy.main()
    done = json.loads(path.read_text())
    row = done["rows"][offpolicy.SFT]
    assert row["accuracy"] == {"0": 0.984, "1": 0.970, "2": 0.784}
    assert row["mean"] == pytest.approx(statistics.mean(sft)) and row["std"] == pytest.approx(statistics.stdev(sft))
    assert row["train_time_s_range"] == [100.0, 102.0]
    assert row["by_difficulty_mean"]["6"] == pytest.approx(statistics.mean(sft) - 0.1)
    [v] = done["verdicts"]
    assert v["claim"].startswith("kd") and v["a"] == kd and v["b"] == sft and v["verdict"] == "unresolved"
    table = offpolicy.markdown(done)  # what BENCHMARKS.md prints
    assert "| sft on the teacher's correct traces | 0.984 | 0.970 | 0.784 | 0.913 +- 0.112 | 27.0 | 100-102 s |" in table
    assert "| kd, forward KL on the teacher's stored top-8 (offline) | 1.000 | 0.880 |" in table  # by length
    assert f"| {v['claim']} | 0.996 / 0.948 / 0.996 | 0.984 / 0.97 / 0.784 |" in table and "**unresolved**" in table
    # every seed agreeing resolves it; a single seed states no verdict at all
    made["runs"]["1"][offpolicy.SFT]["accuracy"] = 0.9
    path.write_text(json.dumps(made))
    offpolicy.main()
    assert json.loads(path.read_text())["verdicts"][0]["verdict"] == "holds"
    made["seeds"] = [0]
    path.write_text(json.dumps(made))
    offpolicy.main()
    assert json.loads(path.read_text())["verdicts"] == []


def test_grpo_vs_trl_alternates_arms_and_states_its_verdicts(bench, monkeypatch, tmp_path):
    grpo = bench("grpo_vs_trl")
    calls = []

    def child(kind, spec, threads, log):
        calls.append(kind)
        fast = kind == "retort"
        return {"steps": 4, "steps_per_s": 2.0 if fast else 1.0, "reward": [0.1, 0.2, 0.3, 0.4 if fast else 0.5]}

    monkeypatch.setattr(grpo, "run_child", child)
    monkeypatch.setattr(grpo, "prepare_student", lambda a, work: (tmp_path / "student", "stand-in"))
    out = tmp_path / "grpo.json"
    monkeypatch.setattr(sys, "argv", ["grpo_vs_trl.py", "--reps", "4", "--work", str(tmp_path / "w"), "--out", str(out),
                                      "--sides", "retort"])
    grpo.main()
    assert calls == ["retort"] * 4
    calls.clear()
    monkeypatch.setattr(sys, "argv", ["grpo_vs_trl.py", "--reps", "4", "--work", str(tmp_path / "w"), "--out", str(out),
                                      "--sides", "retort", "trl"])
    monkeypatch.setitem(sys.modules, "trl", SimpleNamespace(GRPOTrainer=object, __version__="stand-in"))
    grpo.main()
    assert calls == ["retort", "trl", "trl", "retort"] * 2  # each arm first in every other repetition
    res = json.loads(out.read_text())
    assert res["per_seed"]["speedup"] == {str(s): 2.0 for s in range(4)}
    assert res["per_seed"]["retort"]["reward_last_half"]["0"] == pytest.approx(0.35)
    # the reward curves differ the same way at every seed: "~" does not hold (the rule of _verdict)
    assert [v["verdict"] for v in res["verdicts"]] == ["holds", "does not hold", "does not hold"]
    assert [v["verdict"] for v in grpo.restate(out, grpo.ORDERINGS)] == ["holds", "does not hold", "does not hold"]


def test_grpo_vs_trl_rewards_trl_with_retorts_verifier(bench):
    from retort.lm.config import TaskConfig
    from retort.lm.tasks import get_task

    grpo = bench("grpo_vs_trl")
    task = get_task(TaskConfig(name="modchain"))
    ex = task.examples("train", 2, 0)
    reward = grpo.trl_reward(task, {"<s>" + str(e.prompt): e for e in ex})
    got = reward(prompts=["<s>" + str(e.prompt) for e in ex] * 2,
                 completions=[e.solution for e in ex] + ["A: nonsense", ""], completion_ids=[[]] * 4, trainer_state=None)
    assert got == [1.0, 1.0, 0.0, 0.0]
@pytest.mark.skipif(__import__("shutil").which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_sandbox_overhead_runs_both_arms_alternating(bench, tmp_path):
    """benchmarks/sandbox.py at a tiny size: both arms really run (each checks its output), in
    alternating order, and the JSON holds every measurement."""
    sandbox = bench("sandbox")
    out = tmp_path / "sandbox.json"
    result = sandbox.main(["--reps", "2", "--calls", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [r["arm"] for r in result["rows"]] == ["sandbox", "subprocess", "subprocess", "sandbox"]
    assert all(r["ms_per_call"] > 0 for r in result["rows"]) and result["ratio"] > 0


def test_privacy_mnist_table_epsilons_and_orderings(bench):
    """Opacus's README epsilons are the classic RDP conversion of its flags (q = 0.004, 250 steps an
    epoch); its accountant (retort's) converts more tightly; the orderings read the results' paths."""
    privacy = bench("privacy")
    for label, sigma, _, epochs, _, eps, _, _ in privacy.MNIST_ROWS[1:]:
        steps = round(epochs / privacy.SAMPLE_RATE)
        assert privacy.classic_epsilon(sigma, privacy.SAMPLE_RATE, steps) == pytest.approx(eps, abs=0.005), label
        assert privacy.opacus_epsilon(sigma, privacy.SAMPLE_RATE, steps) < eps
    per = lambda *v: {str(i): x for i, x in enumerate(v)}
    rows = {f"{m}|eps{e}": {"perplexity": per(*[base + e_off for e_off in (0.0, 0.1, 0.2)])}
            for e in privacy.EPS_DPOPD for m, base in (("dp_opd", 10.0), ("kd", 11.0), ("sft", 12.0))}
    results = {"seeds": [0, 1, 2], "dpopd": {"rows": rows, "gap_sft_minus_dp_opd": {
        "eps2": per(3.0, 3.1, 3.2), "eps8": per(1.0, 1.1, 1.2)}}}
    verdicts = privacy.state(results, privacy.orderings(results))
    assert [v["verdict"] for v in verdicts] == ["holds"] * 5


@pytest.mark.slow  # every part at its tiny size: a few minutes of CPU
def test_privacy_benchmark_runs_every_part_tiny(tmp_path):
    import subprocess

    out = tmp_path / "p.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "privacy.py"), "--tiny", "--work", str(tmp_path / "w"),
                    "--json", str(out)], check=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
    res = json.loads(out.read_text())
    assert set(res) >= {"mnist", "dpkd", "dpopd", "swing", "audits", "cost", "verdicts"}
    assert all(r["eps_equal"] for r in res["mnist"]["rows"].values() if "eps_equal" in r)
    assert set(res["dpopd"]["rows"]) == {f"{m}|eps{e}" for m in ("dp_opd", "kd", "sft") for e in (2, 8)}


def test_traces_limit_is_the_slower_of_compute_and_memory_per_step_and_prefills_each_prompt_once(bench):
    traces = bench("traces")
    shape = {"matmul_params": 1_000_000, "lm_head_params": 200_000, "layers": 2, "heads": 4, "kv_heads": 2,
             "head_dim": 8, "bytes_per_value": 4}
    machine = {"gflops": 1.0, "gbytes": 1.0}
    got = traces.limit_rates(shape, machine, batch=4, prompt_len=10, new_tokens=4, distinct_prompts=3, rows=6)
    # a step of 4 rows at context 10 + 4/2: 2 x 1e6 x 4 matmul FLOPs + 2 layers x 4 x 4 heads x 8 x 12 x 4
    # attention FLOPs; weights + 2 layers x K,V x 2 kv heads x 8 x 12 x 4 rows values, 4 bytes each
    flops4, bytes4 = 8e6 + 2 * 4 * 4 * 8 * 12 * 4, (1e6 + 2 * 2 * 2 * 8 * 12 * 4) * 4
    assert (got["decode_step_flops"], got["decode_step_bytes"]) == (flops4, bytes4)
    assert got["decode_step_bound"] == "compute"
    assert got["decode_step_limit_tok_s"] == pytest.approx(4 / (flops4 / 1e9))
    # 6 rows: a batch of 4 (compute-bound) and one of 2 (as much compute as memory), 4 steps each;
    # 3 prompts of 10 tokens prefilled once, the LM head at the last token only
    rest = max(4e6 + 2 * 4 * 4 * 8 * 12 * 2, (1e6 + 2 * 2 * 2 * 8 * 12 * 2) * 4) / 1e9
    decode = 4 * (flops4 / 1e9 + rest)
    prefill = 2 * (800_000 * 10 + 200_000) * 3 / 1e9
    assert got["workload_limit_tok_s"] == pytest.approx(6 * 4 / (prefill + decode))
    assert got["workload_limit_prefill_share"] == pytest.approx(prefill / (prefill + decode))
    assert [traces.order(["a", "b", "c"], r)[0] for r in range(3)] == ["a", "b", "c"]


def test_traces_runs_a_loaded_model_end_to_end_at_a_tiny_size(bench, monkeypatch, tmp_path):
    """The real-model path (any model `retort` loads; a tiny preset here, on the built-in task):
    every arm runs each round, token counts and rates land in the results, fractions of the limit
    and the speed-ups are computed from them."""
    traces = bench("traces")
    monkeypatch.setattr(traces, "measure_machine", lambda model, batch: {"gflops": 10.0, "gbytes": 5.0})
    out = tmp_path / "traces.json"
    result = traces.main(["--teacher", "preset:nano", "--task", "modchain", "--prompts", "3", "--n", "2",
                          "--max-new-tokens", "4", "--rounds", "3", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    r = result["teachers"]["preset:nano"]
    assert r["samples"] == 6 and set(r["tokens"]) == {"hf+score", "hf", "fast"}
    for arm, tokens in r["tokens"].items():
        assert len(tokens) == 3 and all(0 < t <= 6 * 4 for t in tokens), arm
        assert r["tokens_per_s_mean"][arm] == pytest.approx(
            statistics.fmean(n / s for n, s in zip(tokens, r["seconds"][arm])))
        assert r["fraction_of_workload_limit"][arm] == pytest.approx(
            r["tokens_per_s_mean"][arm] / r["limit"]["workload_limit_tok_s"])
    assert r["speedup_fast_vs_hf_mean"] == pytest.approx(r["tokens_per_s_mean"]["fast"] / r["tokens_per_s_mean"]["hf"])
