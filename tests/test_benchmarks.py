"""The speed benchmarks drive the engine's own internals (Trainer, loaders, recipes): these check that they still
fit them, on a few steps. They time nothing."""
import argparse
from pathlib import Path

import torch

from resnetlab.data.cifar import ImageSet
from resnetlab.training.config import load_recipe
from resnetlab.training.runner import Splits, setup_runtime

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _tiny_splits(n: int = 64) -> Splits:
    g = torch.Generator().manual_seed(0)
    ds = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10,
                  [f"c{i}" for i in range(10)])
    return Splits(ds, None, ds, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_step_probe_steps_the_default_recipe_at_its_schedule_sizes_and_profiles_the_step(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _common
    import step_probe
    recipe = load_recipe("cifar10_quick", ["data.val_size=0", "train.batch_size=16"])
    device, amp, cl = setup_runtime(recipe)
    tr, loader = _common.build_trainer(recipe, _tiny_splits(), device, amp, cl)
    before = [p.detach().clone() for p in tr.model.parameters()]
    warm_s, img_s = _common.time_steps(tr, loader, epoch=0, warm=1, steps=2)
    assert warm_s > 0 and img_s > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))  # the steps trained
    loader.set_epoch(0)
    assert next(iter(loader))[0].shape[-1] == recipe.data.augment.epoch_sizes[0] == 16  # progressive resizing
    shares = step_probe.profile_shares(tr, loader, epoch=recipe.train.epochs - 1, steps=1)
    assert "convolution" in shares and abs(sum(shares.values()) - 1) < 1e-6


def test_speed_benchmark_fast_path_trains_through_the_engine(monkeypatch, real_data):
    monkeypatch.syspath_prepend(str(BENCH))
    import speed
    args = argparse.Namespace(model="resnet20", kwargs="{}", path="fast", data_dir=str(real_data), steps=1,
                              batch_size=8, device="cpu", no_verify=True)
    row = speed.worker_train(args)
    assert row["path"] == "fast" and row["img_s"] > 0 and row["tflops"] > 0


def test_no_benchmark_imports_another_and_every_machine_description_is_one():
    """Shared plumbing lives in benchmarks/_common.py; the machine is described there only."""
    import ast
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"_common"}
    for path in BENCH.glob("*.py"):
        text = path.read_text()
        imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & scripts, f"{path.name} imports {imported & scripts}"
        assert path.name == "_common.py" or "/proc/cpuinfo" not in text, path.name
