"""Regularisers (dropout before the head, stochastic depth) and `resnetlab tune` on Optuna."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

import resnetlab
from resnetlab.cli import main
from resnetlab.models.blocks import DropPath

ROOT = Path(__file__).resolve().parents[1]


# --- regularisers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kw, size", [("resnet20", {}, 32), ("resnet50", {}, 64),
                                            ("preact_resnet18", {}, 32), ("resnet9", {"widths": [16, 32, 64, 128]}, 32)])
def test_regularisers_keep_shapes_and_eval_is_deterministic(name, kw, size):
    torch.manual_seed(0)
    m = resnetlab.create_model(name, drop_rate=0.5, drop_path_rate=0.3, **kw)
    x = torch.randn(4, 3, size, size)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
    assert a.shape == (4, 10) and torch.equal(a, b)
    m.train()
    with torch.no_grad():
        c, d = m(x), m(x)
    assert not torch.equal(c, d)  # training mode drops


def test_drop_rates_are_the_given_rates():
    torch.manual_seed(0)
    x = torch.ones(20000, 4)
    dp = DropPath(0.3).train()
    y = dp(x)
    dropped = (y[:, 0] == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.02 and torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    assert (y == 0).all(1).eq((y == 0).any(1)).all()  # a whole sample (branch) at a time
    assert torch.equal(DropPath(0.3).eval()(x), x)
    m = resnetlab.create_model("resnet20", drop_path_rate=0.2, drop_rate=0.25)
    rates = [getattr(b.drop_path, "p", 0.0) for stage in m.stages() for b in stage]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.2) < 1e-7 and rates == sorted(rates)  # linear in depth
    head = m.head_drop.train()
    out = head(torch.ones(20000, 8))
    assert abs((out == 0).float().mean().item() - 0.25) < 0.02


def test_regularisers_are_recorded_in_checkpoints(tiny_cifar, tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(run), "--no-progress", "data.verify=false",
                 "data.val_size=40", "train.epochs=1", "train.batch_size=40", "train.precision=fp32",
                 "model.kwargs.drop_rate=0.2", "model.kwargs.drop_path_rate=0.1"]) == 0
    model, meta = resnetlab.load_model(run / "best.safetensors")
    assert meta.kwargs["drop_rate"] == 0.2 and meta.kwargs["drop_path_rate"] == 0.1
    assert model.head_drop.p == 0.2 and model.layer3[1].drop_path.p == 0.1


def test_bad_rates_are_one_line(capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "x"), "model.kwargs.drop_rate=1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop_rate" in err and "[0, 1)" in err


# --- tune ------------------------------------------------------------------------------------------

SPACE = """
optim.lr: {low: 0.005, high: 0.2, log: true}
train.label_smoothing: {low: 0.0, high: 0.3}
model.kwargs.drop_rate: {low: 0.0, high: 0.5}
train.batch_size: {choices: [20, 40]}
"""


def tune_args(data: Path, out: Path, space: Path, *extra: str) -> list[str]:
    return ["tune", "--space", str(space), "--data-dir", str(data), "--out", str(out), "--study", "s",
            "--seed", "0", "data.verify=false", "data.val_size=40", "train.epochs=2", "train.precision=fp32",
            "train.tta=false", *extra]


@pytest.fixture
def space(tmp_path) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    return p


def test_tune_runs_trials_and_writes_best_recipe_and_report(tiny_cifar, tmp_path, space, capsys):
    out = tmp_path / "studies"
    assert main(tune_args(tiny_cifar, out, space, "--trials", "3")) == 0
    study_dir = out / "s"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 3
    for t in study.trials:
        assert Path(t.user_attrs["run_dir"]).is_dir()
        assert (Path(t.user_attrs["run_dir"]) / "last.safetensors").is_file()
    best = study.best_trial
    recipe = resnetlab.training.config.load_recipe(str(study_dir / "best_recipe.yaml"), [])
    assert abs(recipe.optim.lr - best.params["optim.lr"]) < 1e-12
    assert recipe.model.kwargs["drop_rate"] == best.params["model.kwargs.drop_rate"]
    # the objective is the best validation top-1 of the trial's run, read from its own metrics
    import json
    rows = [json.loads(ln) for ln in (Path(best.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert best.value == max(r["val_top1"] for r in rows) and all(r["eval_split"] == "val" for r in rows)
    report = (study_dir / "report.md").read_text()
    assert "| trial | state | val top-1 |" in report
    assert "(no parameter importances: they need at least 5 complete trials, this study has 3)" in report
    assert (study_dir / "objective.png").stat().st_size > 1000 and (study_dir / "trials.csv").is_file()
    # running again continues the same study
    assert main(tune_args(tiny_cifar, out, space, "--trials", "1")) == 0
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{study_dir / 'study.db'}").trials) == 4


@pytest.mark.parametrize("text, message", [
    ("optim.lrr: {low: 0.1, high: 1}", "unknown recipe key 'optim.lrr'"),
    ("optim.lr: {low: 0.5, high: 0.1}", "empty range"),
    ("optim.lr: {low: small, high: 0.1}", "low and high must be numbers"),
    ("model.kwargs.dropout: {low: 0, high: 0.5}", "has no argument 'dropout'"),
    ("optim: {low: 0, high: 1}", "is a section, not a value"),
    ("optim.lr: {low: 0, high: 0.1, log: true}", "a log range needs low > 0"),
    ("model.kwargs.drop_rate: {low: 0.0, high: 1.5}", "makes an invalid recipe"),
])
def test_bad_space_is_one_line(tmp_path, text, message, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    assert main(["tune", "--space", str(p), "--trials", "1", "--out", str(tmp_path / "o"), "data.val_size=40"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_tune_refuses_a_recipe_without_validation(tmp_path, space, capsys):
    assert main(["tune", "--space", str(space), "--trials", "1", "--out", str(tmp_path / "o"), "data.val_size=0"]) == 2
    assert "never the test split" in capsys.readouterr().err


def _cli(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resnetlab", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **env))


def test_two_processes_share_one_sqlite_study(tiny_cifar, tmp_path, space):
    out = tmp_path / "shared"
    procs = [_cli(tune_args(tiny_cifar, out, space, "--trials", "3")) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 's' / 'study.db'}")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(6))  # every trial run exactly once, by one of the two
    folders = sorted(p.name for p in (out / "s").glob("trial-*"))
    assert folders == [f"trial-{n:04d}" for n in range(6)]
    assert all(t.state.is_finished() for t in study.trials)


def test_killed_tune_loses_only_the_running_trial(tiny_cifar, tmp_path, space):
    out = tmp_path / "k"
    args = tune_args(tiny_cifar, out, space, "--trials", "5")
    args[args.index("train.epochs=2")] = "train.epochs=30"
    job = _cli(args, RESNETLAB_TUNE_GRACE_S="2")
    db = out / "s" / "study.db"
    deadline = time.time() + 300
    while True:  # wait for the first trial to finish and the second to start
        assert time.time() < deadline and job.poll() is None
        if db.exists():
            try:
                trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
            except Exception:
                trials = []
            if len(trials) >= 2 and trials[0].state.is_finished() and (out / "s" / "trial-0001").exists():
                break
        time.sleep(0.5)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    time.sleep(3)  # past the heartbeat grace period: the running trial is stale
    again = _cli(tune_args(tiny_cifar, out, space, "--trials", "1"), RESNETLAB_TUNE_GRACE_S="2")
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    states = [t.state.name for t in trials]
    assert states[0] in ("COMPLETE", "PRUNED") and states[1] == "FAIL"  # only the running trial was lost
    retried = [t for t in trials[2:] if t.params == trials[1].params]
    assert retried and retried[0].state.is_finished()  # its parameters were tried again


def test_importances_name_their_evaluator_and_optuna_says_nothing_on_the_terminal(tmp_path, capsys):
    from optuna.distributions import FloatDistribution
    from resnetlab.tune import IMPORTANCE_NAME, write_report
    study = optuna.create_study(direction="maximize")
    for i in range(6):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.01 * (i + 1)}, value=0.5 + 0.05 * i,
                                                  distributions={"optim.lr": FloatDistribution(0.001, 1.0)}))
    write_report(study, tmp_path, None, [], log=lambda *a: None)
    report = (tmp_path / "report.md").read_text()
    assert f"| key | importance ({IMPORTANCE_NAME}) |" in report and "| optim.lr | 1.000 |" in report
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_sigterm_during_a_trial_stops_the_study_with_one_message_and_status_143(tiny_cifar, tmp_path, space, capsys,
                                                                                monkeypatch):
    """A scheduler's SIGTERM mid-trial: the trial's run keeps its mid-epoch checkpoint, the message says how the
    study continues, exit 143."""
    import os
    import signal

    from resnetlab.training import engine
    real_step, calls = engine.Trainer.train_step, {"n": 0}

    def terminated(self, x, y):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the stop request: this step finishes, then the checkpoint
        return real_step(self, x, y)
    monkeypatch.setattr(engine.Trainer, "train_step", terminated)
    assert main(tune_args(tiny_cifar, tmp_path / "studies", space, "--trials", "2")) == 143
    err = capsys.readouterr().err.strip()
    assert err == "interrupted during trial 0; run the same `resnetlab tune` command again to continue the study"
    assert list((tmp_path / "studies" / "s").glob("trial-*/last.safetensors"))  # the mid-epoch checkpoint
