"""The diffusion track through the CLI on tiny models: a teacher network for the ring, each method's
short run (the DM student's sample quality rises), exact resume of a run with an owned critic and
TTUR, the collapse detector on a forced collapse, a digits student that reloads as a diffusers
model, and one-line errors for bad input."""

import json
from pathlib import Path

import pytest
import torch

from retort.cli import main
from retort.diffuse import models
from retort.diffuse.evaluate import collapse, frechet


def cli(*args):
    assert main(list(args)) == 0


@pytest.fixture(scope="module")
def ring_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("ring") / "teacher"
    cli("teacher", "track=diffuse", "task.name=ring", f"out={out}", "train.steps=600", "train.save_every=0")
    return out / "model"


def _train(out, teacher, *extra):
    cli("train", "track=diffuse", "task.name=ring", f"teacher.name={teacher}", f"out={out}", "train.log_every=1",
        "train.save_every=0", "eval.n=2000", *extra)
    return json.loads((Path(out) / "summary.json").read_text())


def _evals(out, key):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r[f"eval/{key}"] for r in rows if f"eval/{key}" in r]


def test_teacher_network_fits_the_exact_ring(ring_teacher):
    info = json.loads((ring_teacher.parent / "teacher.json").read_text())
    assert info["metrics"]["modes_covered"] == 8
    meta = json.loads((ring_teacher / "retort.json").read_text())
    assert meta["sampling"]["sampler"] == "heun" and meta["sampling"]["nfe"] == 35
    assert "EDM" in meta["parameterisation"]


@pytest.mark.slow  # a learning check; each method trains and resumes in the default tier
def test_dmd2_one_step_student_learns_the_ring(tmp_path, ring_teacher):
    s = _train(tmp_path / "dmd2", ring_teacher, "method=dmd2", "train.steps=1000", "train.eval_every=250",
               "method_args.fake_lr=4e-4")
    swd = _evals(tmp_path / "dmd2", "swd_ratio")
    # the mode-averaged start (a teacher copy at sigma_max) spreads onto the ring (the benchmark trains it
    # to all 8 modes; here 200 generator steps from a 600-step teacher copy)
    assert swd[-1] < swd[0] / 3
    assert s["eval"]["modes_covered"] >= 4 and s["eval"]["nfe"] == 1
    rows = [json.loads(line) for line in (tmp_path / "dmd2" / "metrics.jsonl").read_text().splitlines()]
    # TTUR: the generator's DM loss only on every 5th step, the critic's every step
    assert all(("dm" in r) == ((r["step"] - 1) % 5 == 0) for r in rows if "fake" in r)
    model, meta = models.load(str(tmp_path / "dmd2" / "model"))
    assert meta["sampling"] == {"sampler": "renoise", "sigmas": [pytest.approx(20.0)], "nfe": 1, "diffusers_ramp": [0.0]}


@pytest.mark.parametrize("method,extra", [("cd", []), ("dmd", ["method_args.reg_pairs=64"]), ("gdd", []),
                                          ("uni_instruct", ["method_args.warmup_steps=10"]),
                                          ("uni_instruct", ["method_args.warmup_steps=10", "method_args.disc=separate"]),
                                          ("dmd2", ["student.steps=2", "method_args.gan_weight=0.01"])])
def test_each_method_trains_and_changes_the_student(tmp_path, ring_teacher, method, extra):
    s = _train(tmp_path / method, ring_teacher, f"method={method}", "train.steps=30", *extra)
    before, _ = models.load(str(ring_teacher))
    after, meta = models.load(str(tmp_path / method / "model"))
    changed = any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    assert changed and s["steps"] == 30
    assert meta["method"] == method and len(meta["sampling"]["sigmas"]) == (2 if "student.steps=2" in extra else 1)


def test_gdd_i_trains_only_what_it_does_not_freeze(tmp_path, ring_teacher):
    _train(tmp_path / "gddi", ring_teacher, "method=gdd", "method_args.freeze=true", "train.steps=20")
    before, _ = models.load(str(ring_teacher))
    after, _ = models.load(str(tmp_path / "gddi" / "model"))
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    for k in b:
        same = torch.equal(a[k], b[k])
        assert same == (k.startswith("hidden.") and k.endswith(".weight")), k


def test_gdd_i_freezes_a_unets_convolutions_and_output_projections():
    from retort.diffuse.methods.gdd import gdd_freeze
    from retort.diffuse.nets import UNetDenoiser, digits_unet

    d = UNetDenoiser(digits_unet(10, (8, 16)), 10)
    trainable = gdd_freeze(d)
    names = {n for n, p in d.unet.named_parameters() if not p.requires_grad}
    assert any("conv1" in n for n in names) and any("to_out" in n for n in names)
    assert not any("to_q" in n or "norm" in n or "time_embedding" in n or "class_embedding" in n for n in names)
    assert 0 < trainable < 0.5 * sum(p.numel() for p in d.parameters())


@pytest.mark.parametrize("method", [["method=dmd2", "method_args.gan_weight=0.01"], ["method=cd"]])
def test_resume_is_exact_with_owned_critics_and_ema_targets(tmp_path, ring_teacher, method):
    args = [*method, "train.steps=20", "student.steps=2", "train.save_every=10"]
    _train(tmp_path / "straight", ring_teacher, *args)
    _train(tmp_path / "cut", ring_teacher, *args)
    cut = tmp_path / "cut"
    # a crash just after the step-10 checkpoint: what was written after it is gone
    import shutil

    shutil.rmtree(cut / "ckpt" / "step-0000020")
    shutil.rmtree(cut / "model")
    (cut / "summary.json").unlink()
    cli("train", "--resume", "track=diffuse", "task.name=ring", f"teacher.name={ring_teacher}", f"out={cut}",
        "train.log_every=1", "eval.n=2000", *args)
    a, _ = models.load(str(tmp_path / "straight" / "model"))
    b, _ = models.load(str(cut / "model"))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k


def test_a_forced_collapse_is_detected_and_stops_the_run(tmp_path, ring_teacher):
    # a critic that cannot keep up (lr 1e-6) beside a generator lr 30x the default: the samples
    # shrink onto one point, as FastVideo's users' students turn solid
    s = _train(tmp_path / "collapse", ring_teacher, "method=dmd2", "train.steps=1000", "train.eval_every=100",
               "train.lr=0.003", "method_args.fake_lr=1e-6", "eval.collapse=stop")
    assert s["stopped_early"] and "collapse" in s["stop_reason"] and "variance" in s["stop_reason"]
    assert s["steps"] < 1000
    assert (tmp_path / "collapse" / "model" / "retort.json").is_file()  # the state it stopped at is kept


def test_collapse_detector_compares_with_the_runs_own_best():
    class Cfg:
        min_modes, min_variance = 0.5, 0.1

    best: dict = {}
    assert collapse({"modes_covered": 0, "variance_ratio": 0.02}, Cfg, best) is None  # the mode-averaged start
    assert collapse({"modes_covered": 8, "variance_ratio": 0.9}, Cfg, best) is None
    why = collapse({"modes_covered": 3, "variance_ratio": 0.8}, Cfg, best)
    assert "modes covered fell to 3 from 8" in why
    assert "variance" in collapse({"modes_covered": 8, "variance_ratio": 0.05}, Cfg, best)
    assert "not finite" in collapse({"nonfinite": 0.25}, Cfg, {})


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet(a, a) == pytest.approx(0.0, abs=1e-9)
    # N(0, I) vs N(m, 4 I) in 3-D: |m|^2 + 3 (1 + 4 - 2 * 2) = |m|^2 + 3
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64) * 2 + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert frechet(a, b) == pytest.approx(4.0, rel=0.1)


def test_a_digits_student_reloads_as_a_diffusers_model(tmp_path):
    from diffusers import EDMEulerScheduler, UNet2DModel

    teacher = tmp_path / "teacher"
    cli("teacher", "track=diffuse", "task.name=digits", f"out={teacher}", "student.name=unet:8-16", "train.steps=3",
        "train.batch_size=8", "eval.n=16")
    out = tmp_path / "student"
    cli("train", "track=diffuse", "task.name=digits", f"teacher.name={teacher / 'model'}", f"out={out}",
        "method=dmd2", "train.steps=3", "train.batch_size=4", "eval.n=16", "train.save_every=0",
        "method_args.gan_weight=0.01")
    unet = UNet2DModel.from_pretrained(str(out / "model" / "unet"))
    sched = EDMEulerScheduler.from_pretrained(str(out / "model" / "scheduler"))
    retort_model, meta = models.load(str(out / "model"))
    sched.set_timesteps(sigmas=torch.tensor(meta["sampling"]["diffusers_ramp"]))  # [0.0]: sigma_max
    assert float(sched.sigmas[0]) == pytest.approx(80.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g) * sched.init_noise_sigma
    labels = torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        for t in sched.timesteps:
            out_ = unet(sched.scale_model_input(x, t), t, class_labels=labels).sample
            x_d = sched.step(out_, t, x).prev_sample
        ours = retort_model(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 80.0, 80.0, labels)
    assert torch.allclose(x_d, ours, atol=1e-4)
    assert meta["guidance"].startswith("D = D(x, null)")


@pytest.mark.parametrize("args,expect", [
    (["task.name=cifar"], "not a diffusion dataset"),
    (["task.name=digits", "student.name=mlp:64-2", "method=denoise"], "MLP denoiser is for points"),
    (["task.name=ring", "method=dmd2"], "retort teacher track=diffuse task.name=ring"),
    (["task.name=ring", "method=nope"], "unknown"),
    (["task.name=ring", "student.name=unet"], "U-Net is for images"),
    (["task.name=grid", "method=dmd2", "teacher.name=RING"], "was trained on ring; the task is grid"),
    (["task.name=ring", "method=uni_instruct", "teacher.name=RING", "method_args.sigma_init=100"],
     "method_args.sigma_init=100.0: expected a level from 0.002 to 20.0"),
    (["task.name=ring", "method=phased_dmd", "teacher.name=RING", "student.steps=3"],
     "student.steps=3: phased_dmd needs a multiple of the 2 phases"),
])
def test_bad_input_gets_one_clear_line(tmp_path, capsys, args, expect, ring_teacher):
    args = [a.replace("RING", str(ring_teacher)) for a in args]
    assert main(["train", "track=diffuse", f"out={tmp_path / 'x'}", "train.steps=2", *args]) == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("steps,shown", [("[0]", "[0]"), ("[-1]", "[-1]"), ("[2,0]", "[2, 0]"), ("[1001]", "[1001]")])
def test_eval_refuses_step_counts_that_are_not_counts(tmp_path, capsys, steps, shown):
    """`steps=[0]` once sampled 1 step without a word, `steps=[-1]` ended in an IndexError in the sampler:
    refused when the config is read, before any model is loaded or anything written."""
    out = tmp_path / "eval.json"
    assert main(["eval", "track=diffuse", "task.name=ring", f"steps={steps}", "-m", f"s={tmp_path / 'none'}",
                 "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"steps={shown}:" in err and "expected whole numbers from 1 to 1000" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_eval_step_counts_in_range_are_kept():
    from retort.config import load_config
    from retort.diffuse.config import DiffuseEvalRun
    from retort.diffuse.evaluate import student_sampling
    from retort.errors import ConfigError

    assert load_config(DiffuseEvalRun, None, ["steps=[1,4,1000]"]).steps == [1, 4, 1000]
    with pytest.raises(ConfigError, match=r"steps=\[0\]"):
        DiffuseEvalRun(steps=[0])  # the Python API's dataclass checks the same
    assert len(student_sampling({}, 4, 20.0)[0]) == 4 and len(student_sampling({}, None, 20.0)[0]) == 1
    # a phased_dmd model: each expert at its own phase's levels, so a step count must fit the phases
    phased = {"routed": {"students": 2, "bounds": [20.0, 2.0, 0.0]}}
    assert student_sampling(phased, 2, 20.0) == ([pytest.approx(20.0), pytest.approx(2.0)], "renoise")
    with pytest.raises(ConfigError, match="3 does not fit a phased_dmd model of 2 phases .*expected a multiple of 2"):
        student_sampling(phased, 3, 20.0)


@pytest.fixture(scope="module")
def classes_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("classes") / "teacher"
    cli("teacher", "track=diffuse", "task.name=classes", f"out={out}", "train.steps=300", "train.save_every=0",
        "eval.n=500")
    return out / "model"


def test_msd_routes_classes_to_students_and_resumes_exactly(tmp_path, classes_teacher):
    from retort.diffuse.methods.msd import partition
    from retort.diffuse.nets import Routed

    assert partition(10, 2, "consecutive") == [0] * 5 + [1] * 5
    assert sorted(partition(10, 5, "random", 3)) == sorted(partition(10, 5, "consecutive"))
    args = ["method=msd", "method_args.students=2", "train.steps=12", "train.save_every=6", "train.log_every=1",
            "eval.n=500", "task.name=classes", f"teacher.name={classes_teacher}"]
    cli("train", "track=diffuse", f"out={tmp_path / 'a'}", *args)
    model, meta = models.load(str(tmp_path / "a" / "model"))
    assert isinstance(model, Routed) and meta["routed"] == {"students": 2, "groups": [0] * 5 + [1] * 5}
    teacher, _ = models.load(str(classes_teacher))
    for sub in model.models:  # each student trained on its own classes, away from the teacher copy
        assert any(not torch.equal(a, b) for a, b in zip(sub.state_dict().values(), teacher.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(model.models[0].state_dict().values(),
                                                      model.models[1].state_dict().values()))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert "class_swd" in summary["eval"]
    # a crash after the step-6 checkpoint, resumed: the same students
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "ckpt" / "step-0000012")
    shutil.rmtree(tmp_path / "b" / "model")
    (tmp_path / "b" / "summary.json").unlink()
    cli("train", "--resume", "track=diffuse", f"out={tmp_path / 'b'}", *args)
    again, _ = models.load(str(tmp_path / "b" / "model"))
    for va, vb in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6)


def test_msd_needs_classes(tmp_path, capsys, ring_teacher):
    assert main(["train", "track=diffuse", "task.name=ring", "method=msd", f"teacher.name={ring_teacher}",
                 f"out={tmp_path / 'x'}", "train.steps=2"]) == 2
    assert "has none" in capsys.readouterr().err


def test_phased_dmd_trains_one_expert_per_phase(tmp_path, ring_teacher, capsys):
    from retort.diffuse.methods.phased_dmd import phase_levels
    from retort.diffuse.nets import Phased

    assert [v for p in phase_levels([20.0, 2.0, 0.0], 2) for v in p] == [pytest.approx(20.0), pytest.approx(2.0)]
    levels = phase_levels([20.0, 2.0, 0.0], 4)
    assert levels[0][0] == pytest.approx(20.0) and 2.0 < levels[0][1] < 20.0 and levels[1][0] == pytest.approx(2.0)
    s = _train(tmp_path / "phased", ring_teacher, "method=phased_dmd", "student.steps=4", "train.steps=20",
               "method_args.bounds=[2.0]", "method_args.ratio=2")
    model, meta = models.load(str(tmp_path / "phased" / "model"))
    assert isinstance(model, Phased) and meta["routed"]["bounds"] == pytest.approx([20.0, 2.0, 0.0])
    assert meta["sampling"]["sigmas"] == pytest.approx([v for p in levels for v in p])
    teacher, _ = models.load(str(ring_teacher))
    for expert in model.models:  # phase 1 trained expert 0 for 10 steps, phase 2 expert 1
        assert any(not torch.equal(a, b) for a, b in zip(expert.state_dict().values(), teacher.state_dict().values()))
    rows = [json.loads(line) for line in (tmp_path / "phased" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows if "phase" in r] == [0] * 10 + [1] * 10
    assert s["eval"]["nfe"] == 4
    out = tmp_path / "eval.json"
    assert main(["eval", "track=diffuse", "task.name=ring", "eval.n=100", "steps=[2,3]",
                 "-m", f"p={tmp_path / 'phased' / 'model'}", "--json", str(out)]) == 2
    assert f"-m {tmp_path / 'phased' / 'model'}: steps: 3 does not fit a phased_dmd model" in capsys.readouterr().err
    assert not out.exists()


def test_eval_compares_teacher_and_students_with_hybrid_inference(tmp_path, ring_teacher):
    _train(tmp_path / "cd2", ring_teacher, "method=cd", "student.steps=2", "train.steps=10")
    out = tmp_path / "eval.json"
    assert main(["eval", "track=diffuse", "task.name=ring", "eval.n=500", "-m", f"cd={tmp_path / 'cd2' / 'model'}",
                 "--hybrid", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert list(rows) == ["teacher (exact), 35 NFE", "cd, 2 NFE", "cd + teacher's first 1 step(s), 2 NFE"]
    assert rows["cd + teacher's first 1 step(s), 2 NFE"]["hybrid_teacher_steps"] == 1
    assert all(len(r["points"]) == 500 and "swd_ratio" in r for r in rows.values())
    # DT-visualisation: the teacher's and the student's first-step predictions, not the hybrid row's
    first = {k: r["first_step"] for k, r in rows.items() if "first_step" in r}
    assert list(first) == ["teacher (exact), 35 NFE", "cd, 2 NFE"]
    assert all(len(f["points"]) == 16 and f["sigma"] == pytest.approx(20.0) for f in first.values())
    # the exact teacher at sigma_max = 20 predicts a blurred average: ~0.39 z, near the centre of a ring of radius 4
    t = first["teacher (exact), 35 NFE"]
    assert t["spread"] < 1.0 and t["to_data"] > 2.0
    from retort.report import write_report

    html = write_report([str(out)], tmp_path / "r.html").read_text()
    assert "samples of each generator" in html and "SWD / noise floor" in html
    assert "First-step predictions (DT-visualisation)" in html and "step-1 spread" in html


def test_uni_instructs_separate_discriminator_leaves_the_fake_score_to_the_score(ring_teacher):
    from retort.config import load_config
    from retort.diffuse.config import DiffuseRun
    from retort.diffuse.methods.uni_instruct import Discriminator, UniInstruct
    from retort.diffuse.track import TRACK
    from retort.track import method_config

    def fake_grads(disc, lsd):
        run = load_config(DiffuseRun, None, ["task.name=ring", "method=uni_instruct", f"teacher.name={ring_teacher}",
                                             f"method_args.disc={disc}", f"method_args.lsd={lsd}"])
        data = TRACK.get_task(run.task)
        ctx = TRACK.context(run, data, {"sampling": {"sigmas": [10.0]}}, torch.device("cpu"), lambda m: None)
        method = UniInstruct(ctx, method_config(run, TRACK))
        owned = method.owned()
        method.owned_modules = {k: v.module for k, v in owned.items()}
        student, _ = models.load(str(ring_teacher))
        plan = type("Plan", (), {"batch_size": 32, "accum": 1, "world": 1, "rank": 0, "start_step": 0, "seed": 0})()
        method.loss(student.train(), next(method.batches(plan))).loss.backward()
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in student.parameters())
        if disc == "separate":
            assert owned["fake"].module.head is None and isinstance(owned["disc"].module, Discriminator)
            assert all(p.grad is not None for p in owned["disc"].module.parameters())
        return torch.cat([p.grad.flatten() for p in owned["fake"].module.denoiser.parameters()])

    # separate: the discriminator's loss weight does not reach the fake score; shared: it does
    assert torch.allclose(fake_grads("separate", 1.0), fake_grads("separate", 50.0))
    assert not torch.allclose(fake_grads("shared", 1.0), fake_grads("shared", 50.0))


def test_a_denoiser_is_evaluated_with_its_own_sampler(tmp_path):
    """`method=denoise` (the demo's `denoise` row) is measured during training as it is sampled after:
    Heun at teacher.steps (NFE 2 steps - 1), not the students' re-noising sampler."""
    cli("train", "track=diffuse", "task.name=ring", "method=denoise", "student.name=mlp:32-2", "teacher.steps=4",
        f"out={tmp_path / 'd'}", "train.steps=2", "train.save_every=0", "eval.n=100")
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["eval"]["nfe"] == 7
