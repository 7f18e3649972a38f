"""Declared once: a recipe key, a model and checkpoint metadata each live in one place, and everything that lists,
checks or reads them follows from it."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import resnetlab
from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.models import CheckpointMeta, load_model
from resnetlab.schema import setting
from resnetlab.training import config
from resnetlab.weights import save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "resnetlab"


# ---------------------------------------------------------------- recipe keys
@pytest.fixture
def recipe_with_a_new_key(monkeypatch):
    """A new recipe key, added the one way there is: a field on its section's dataclass."""
    @dataclass
    class Train(config.TrainConfig):
        warm_restarts: int = setting(0, range=(0, 10), resume=True, help="SGDR restarts (a key added by a test)")
    monkeypatch.setattr(config, "TrainConfig", Train)  # Recipe's `train: TrainConfig` now resolves to it
    return Train


def test_a_recipe_key_added_on_its_field_is_listed_checked_resumable_and_tunable(recipe_with_a_new_key, tmp_path,
                                                                                 capsys):
    key = config.recipe_key("train.warm_restarts")
    assert (key.default, key.range.text(), key.resume) == (0, "[0, 10]", True)
    assert "train.warm_restarts" in config.resume_keys()
    assert main(["recipes", "keys"]) == 0
    listed = capsys.readouterr().out
    assert "train.warm_restarts" in listed and "SGDR restarts" in listed and "[0, 10]" in listed
    assert config.load_recipe(None, ["train.warm_restarts=3"]).train.warm_restarts == 3
    with pytest.raises(UserError, match=r"recipe key train.warm_restarts: must be in \[0, 10\], got 11"):
        config.load_recipe(None, ["train.warm_restarts=11"])
    with pytest.raises(UserError, match="recipe key train.warm_restarts: expected an integer"):
        config.load_recipe(None, ["train.warm_restarts=many"])
    from resnetlab.tune import load_space
    space = tmp_path / "space.yaml"
    space.write_text("train.warm_restarts: {low: 0, high: 4}\n")
    assert [p.key for p in load_space(space, config.Recipe())] == ["train.warm_restarts"]


def test_choices_ranges_and_resume_rules_live_on_the_fields_only():
    text = (SRC / "training" / "config.py").read_text()
    tree = ast.parse(text)
    tables = [t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
              if isinstance(t, ast.Name) and t.id in ("CHOICES", "RANGES")]
    assert tables == []
    assert "RESUME_SAFE" not in (SRC / "training" / "runner.py").read_text()
    assert config.recipe_key("finetune.strategy").choices == ("linear-probe", "partial", "full", "two-stage")
    assert config.recipe_key("optim.momentum").range.text() == "[0, 1)"
    with pytest.raises(UserError, match="is a section, not a value"):
        config.recipe_key("train.early_stopping")


@pytest.mark.parametrize("override,message", [
    ("optim.betas=[0.9,1.0]", r"optim.betas: expected 2 numbers, each in \[0, 1\), got \[0.9, 1.0\]"),
    ("schedule.milestones=[5,2]", r"schedule.milestones: expected increasing numbers, each >= 0, got \[5, 2\]"),
    ("data.augment.jpeg_quality=[90,30]", r"jpeg_quality: expected \[low, high\], each in \[1, 100\]"),
    ("data.augment.noise_std=[0,65]", r"noise_std: expected \[low, high\], each in \[0, 64\], got \[0, 65\]"),
    ("data.augment.epoch_sizes=[16.5]", r"epoch_sizes: expected an integer"),
])
def test_list_keys_are_checked_by_their_declared_element_range_length_and_order(override, message):
    with pytest.raises(UserError, match=message):
        config.load_recipe(None, [override])


# ---------------------------------------------------------------- models
def test_a_model_row_gives_its_factory_listing_and_zoo_row(monkeypatch, capsys):
    from resnetlab.models import Arch, BasicBlock, registry, resnet
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # the row is gone again after the test
    monkeypatch.setattr(resnet, "ARCHS", dict(resnet.ARCHS))
    factory = resnetlab.models.register_arch(
        Arch("resnet26_test", BasicBlock, (4, 4, 4), "cifar", "a depth added by a test",
             (("widths", (16, 32, 64)), ("stem", "cifar"))))
    assert factory.__name__ == "resnet26_test" and "a depth added by a test" in factory.__doc__
    assert "resnet26_test" in resnetlab.list_models()
    model = resnetlab.create_model("resnet26_test", num_classes=10, widths=[8, 16, 32])
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet26_test"]["params"] == sum(p.numel() for p in factory().parameters())


def test_every_resnet_row_is_a_public_factory():
    from resnetlab import models
    from resnetlab.models.resnet import ROWS
    assert len(ROWS) == 24
    for row in ROWS:
        assert getattr(models, row.name).__name__ == row.name and row.name in models.__all__


def test_every_model_argument_is_documented_where_its_constructor_defines_it():
    from resnetlab.models import get_spec, registry
    assert not hasattr(registry, "HELP")  # no second table of argument texts
    undocumented = [f"{name}.{arg}" for name in resnetlab.list_models() for arg, a in get_spec(name).args.items()
                    if not a.help]
    assert undocumented == []
    assert get_spec("resnet18").args["groups"].help == "groups of the 3x3 convs of Bottleneck blocks (ResNeXt's cardinality)"
    with pytest.raises(UserError, match=r"drop_rate=2: expected a number in \[0, 1\) \(dropout before the classifier"):
        resnetlab.create_model("resnet20", drop_rate=2)


# ---------------------------------------------------------------- checkpoint metadata
# What resnetlab wrote into a checkpoint before metadata had a type (no task): it must keep loading.
OLD_META = {"arch": "resnet20", "kwargs": {}, "num_classes": 10, "classes": [f"c{i}" for i in range(10)],
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616], "input_size": 32,
            "resize": {"mode": "squash", "decode_size": 32},
            "recipe": {"name": "x", "train": {"epochs": 1}},
            "dataset": {"dataset": "cifar10", "path": None, "data_dir": "/data", "val_size": 0, "split_seed": 0,
                        "test_fraction": 0.2, "split": None},
            "metrics": {"test": {"top1": 0.5}}, "epoch": 1, "step": 10}


def test_a_checkpoint_written_before_typed_metadata_loads_as_classification(tmp_path):
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, resnetlab.create_model("resnet20").state_dict(), OLD_META)
    model, meta = load_model(path)
    assert isinstance(meta, CheckpointMeta) and meta.task == "classification"
    assert (meta.arch, meta.epoch, meta.step, meta.data_ref.data_dir) == ("resnet20", 1, 10, "/data")
    assert meta.policy.input_size == 32 and meta.metrics["test"]["top1"] == 0.5
    assert CheckpointMeta.from_dict(meta.to_dict(), path) == meta  # the writer and the reader agree
    assert dict(meta.to_dict(), task=None) == dict(OLD_META, task=None)  # nothing lost or renamed


@pytest.mark.parametrize("change,message", [
    ({"task": "detection"}, "metadata 'task' must be one of classification"),
    ({"epoch": "one"}, "metadata 'epoch': expected an integer"),
    ({"dataset": {"data_dir": 5}}, "metadata 'dataset.data_dir': expected a string"),
    ({"dataset": {"elsewhere": "/"}}, "metadata 'dataset' has unknown key"),
    ({"recipe": [1]}, "metadata 'recipe': expected a dict"),
    ({"owner": "me"}, r"unknown checkpoint metadata key\(s\) owner"),
])
def test_bad_metadata_is_one_line_naming_the_file_and_key(tmp_path, change, message):
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, resnetlab.create_model("resnet20").state_dict(), dict(OLD_META, **change))
    with pytest.raises(UserError, match=message) as e:
        load_model(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_metadata_is_read_by_attribute_everywhere_outside_its_schema():
    """No `meta["..."]` / `meta.get(...)` reads of checkpoint metadata outside models/checkpoint.py."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "checkpoint.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.value if isinstance(node, ast.Subscript) else (
                node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" else None)
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if name in ("meta", "metadata") and not (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
