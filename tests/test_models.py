import json

import pytest
import torch
import torchvision

import resnetlab
from resnetlab import UserError
from resnetlab.cli import main
from resnetlab.evaluation.profile import count_macs, count_params
from resnetlab.models import ZeroPadShortcut

PARAMS_10 = {
    ("resnet20", "A"): 269_722, ("resnet20", "B"): 272_474, ("resnet32", "A"): 464_154,
    ("resnet44", "A"): 658_586, ("resnet56", "A"): 853_018, ("resnet110", "A"): 1_727_962,
    ("resnet1202", "A"): 19_421_274,
}
PARAMS_1000 = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
               "resnet101": 44_549_160, "resnet152": 60_192_808}


@pytest.mark.parametrize("name,option", list(PARAMS_10))
def test_cifar_param_counts(name, option):
    assert count_params(resnetlab.create_model(name, num_classes=10, option=option)) == PARAMS_10[(name, option)]


@pytest.mark.parametrize("name", list(PARAMS_1000))
def test_imagenet_param_counts(name):
    assert count_params(resnetlab.create_model(name, num_classes=1000)) == PARAMS_1000[name]


def test_resnet18_cifar_stem_params():
    assert count_params(resnetlab.create_model("resnet18", num_classes=10, stem="cifar")) == 11_173_962


@pytest.mark.parametrize("name", list(PARAMS_1000))
def test_torchvision_compatible(name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    # Non-trivial BN statistics so the comparison exercises every tensor.
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    ours = resnetlab.create_model(name, num_classes=1000).eval()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd)
    assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)
    ours.load_state_dict(ref_sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name,expected", [("resnet18", 1.814e9), ("resnet50", 4.089e9)])
def test_macs_at_224(name, expected):
    macs = count_macs(resnetlab.create_model(name, num_classes=1000), 224)
    assert abs(macs - expected) / expected < 0.01


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name,kw,size", [
    ("resnet20", {}, 32), ("resnet56", {"option": "B"}, 32), ("resnet18", {"stem": "cifar"}, 32),
    ("resnet18", {}, 32), ("resnet50", {}, 224), ("resnet18", {}, 224), ("preact_resnet18", {}, 32),
    ("resnet9", {}, 32),
])
def test_output_shapes(name, kw, size, batch):
    model = resnetlab.create_model(name, num_classes=7, **kw).eval()
    with torch.no_grad():
        assert model(torch.randn(batch, 3, size, size)).shape == (batch, 7)


def test_option_a_is_parameter_free():
    model = resnetlab.create_model("resnet20", option="A")
    shortcuts = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2
    assert all(sum(p.numel() for p in s.parameters()) == 0 for s in shortcuts)
    x = torch.randn(2, 16, 8, 8)
    y = shortcuts[0](x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and y[:, :8].abs().sum() == 0


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "preact_resnet18", "resnet18"])
def test_zero_init_residual(name):
    model = resnetlab.create_model(name, zero_init_residual=True)
    lasts = [m.last_bn() for m in model.modules() if hasattr(m, "last_bn")]
    assert lasts and all(bn.weight.abs().sum() == 0 for bn in lasts)
    other = resnetlab.create_model(name)
    assert all(m.last_bn().weight.abs().sum() > 0 for m in other.modules() if hasattr(m, "last_bn"))


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="valid names: .*resnet20.*resnet1202"):
        resnetlab.create_model("resnet21")


def test_models_cli_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet20"]["params"] == 269_722 and rows["resnet20"]["input"] == 32
    assert rows["resnet18"]["input"] == 224 and abs(rows["resnet18"]["macs"] / 1.814e9 - 1) < 0.01
    assert rows["resnet18"]["flops"] == 2 * rows["resnet18"]["macs"]
    assert rows["resnet18 (stem=cifar)"]["params"] == 11_173_962
    assert set(resnetlab.list_models()) <= {n.split(" ")[0] for n in rows}
    sep = rows["resnet18 (block=separable)"]  # beside the standard block, same classes and input
    assert sep["classes"] == 1000 and sep["input"] == 224 and sep["params"] < rows["resnet18"]["params"] / 5


def test_resnet9_whitening_layer_decorrelates_patches():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    x = torch.einsum("ij,njhw->nihw", mix, torch.randn(200, 3, 16, 16))  # correlated channels
    model = resnetlab.create_model("resnet9", widths=(8, 8, 8, 8), whiten=True)
    assert not model.whiten.weight.requires_grad
    model.init_whitening(x, eps=1e-4)
    y = model.whiten(x)[:, :, 1:-1, 1:-1]  # interior: no zero padding
    c = y.permute(1, 0, 2, 3).reshape(27, -1)
    c = c - c.mean(1, keepdim=True)
    cov = c @ c.T / c.shape[1]
    assert torch.allclose(cov, torch.eye(27), atol=0.05)
    assert model(x[:2]).shape == (2, 10)


def test_resnet9_airbench_whitening_stem_is_signed_2x2_whitening_with_a_trained_bias():
    """whiten_style=airbench: 2x2 patches without padding, the 12 whitening filters and their negatives (widths[0]
    must be 24), a bias that trains (not a fixed parameter) and the activation straight after."""
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    x = torch.einsum("ij,njhw->nihw", mix, torch.randn(200, 3, 16, 16))
    model = resnetlab.create_model("resnet9", widths=(24, 8, 16, 16), whiten=True, whiten_style="airbench",
                                   activation="gelu")
    model.init_whitening(x, eps=1e-4)
    y = model.whiten(x)
    assert y.shape == (200, 24, 15, 15)
    assert torch.allclose(y[:, 12:], -y[:, :12], atol=1e-6)
    c = y[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    c = c - c.mean(1, keepdim=True)
    assert torch.allclose(c @ c.T / c.shape[1], torch.eye(12), atol=0.05)
    assert model.whiten.bias.requires_grad and not model.whiten.weight.requires_grad
    assert [id(p) for p in model.fixed_parameters()] == [id(model.whiten.weight)]
    assert isinstance(model.prep[0], torch.nn.GELU) and len(model.prep) == 1
    assert model.fold_for_inference() == 0 and model(x[:2]).shape == (2, 10)
    with pytest.raises(UserError, match=r"whiten_style airbench makes 24 channels .* set widths\[0\] to 24, not 32"):
        resnetlab.create_model("resnet9", widths=(32, 8, 16, 16), whiten=True, whiten_style="airbench")
    with pytest.raises(UserError, match=r"whiten_style airbench is a whitening stem; set whiten to true"):
        resnetlab.create_model("resnet9", widths=(24, 8, 16, 16), whiten_style="airbench")


def test_resnet9_airbench_norm_and_activation_reach_every_layer():
    """activation=gelu replaces every ReLU (the residual blocks' too); the BN options reach every BatchNorm; frozen
    BN scales stay at 1, are left out of the optimizer and count as fixed (no fine-tuning strategy trains them)."""
    from resnetlab.training.config import OptimConfig
    from resnetlab.training.optim import param_groups
    model = resnetlab.create_model("resnet9", widths=(8, 8, 16, 16), whiten=True, pool_first=True,
                                   activation="gelu", bn_momentum=0.4, bn_eps=1e-12, bn_frozen_scale=True)
    mods = list(model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in mods)
    assert sum(isinstance(m, torch.nn.GELU) for m in mods) == 6  # prep, 3 pooling layers, 1 per block (used twice)
    bns = [m for m in mods if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 8 and all(m.momentum == 0.4 and m.eps == 1e-12 for m in bns)
    trained = {id(p) for g in param_groups(model, OptimConfig(name="muon")) for p in g["params"]}
    assert all(not m.weight.requires_grad and id(m.weight) not in trained and id(m.bias) in trained for m in bns)
    assert {id(m.weight) for m in bns} <= {id(p) for p in model.fixed_parameters()}
    model.train()(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(m.weight.grad is None and torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    plain = resnetlab.create_model("resnet9", widths=(8, 8, 16, 16))
    assert all(m.weight.requires_grad and m.momentum == 0.1 for m in plain.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    assert len(plain.fixed_parameters()) == 0


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "resnet50"])
def test_resnet_takes_airbench_norm_and_activation(name):
    """The ResNets take resnet9's activation and BN options: no ReLU left, every BN set, frozen scales fixed
    (out of every fine-tuning strategy, no gradient); weights keep torchvision's names."""
    model = resnetlab.create_model(name, 10, stem="cifar", activation="gelu", bn_momentum=0.4, bn_eps=1e-12,
                                   bn_frozen_scale=True)
    plain = resnetlab.create_model(name, 10, stem="cifar")
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, torch.nn.GELU) for m in model.modules()) == sum(
        isinstance(m, torch.nn.ReLU) for m in plain.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.4 and m.eps == 1e-12 and not m.weight.requires_grad for m in bns)
    assert {id(m.weight) for m in bns} == {id(p) for p in model.fixed_parameters()}
    assert plain.fixed_parameters() == []
    from resnetlab.models.freeze import apply_strategy
    apply_strategy(model, "full")
    assert not any(m.weight.requires_grad for m in bns)
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(m.weight.grad is None and torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)


def test_resnet_refuses_zero_init_residual_with_frozen_bn_scales():
    with pytest.raises(UserError, match="zero_init_residual sets BN scales to zero and bn_frozen_scale would keep "
                                        "them there; choose one"):
        resnetlab.create_model("resnet18", 10, zero_init_residual=True, bn_frozen_scale=True)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20", "preact_resnet18", "resnet9"])
def test_classifier_api(name):
    """timm's get_classifier / reset_classifier: callers never need to know the head is called fc."""
    model = resnetlab.create_model(name, num_classes=10)
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Linear) and head.out_features == 10
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.reset_classifier(37)
    assert model.get_classifier() is not head and model.get_classifier().out_features == 37
    size = 64 if resnetlab.models.get_spec(name).family == "imagenet" else 32
    assert model.eval()(torch.zeros(2, 3, size, size)).shape == (2, 37)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in backbone.items())


def test_public_factories_match_the_registry():
    from resnetlab import models
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet20", "resnet32", "resnet44",
                 "resnet56", "resnet110", "resnet1202", "preact_resnet18"):
        factory = getattr(models, name)
        assert factory.__name__ == name
        a, b = factory(num_classes=10), resnetlab.create_model(name, num_classes=10)
        assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert models.resnet18().fc.out_features == 1000 and models.resnet20().fc.out_features == 10


@pytest.mark.parametrize("name,kwargs,message", [
    ("resnet18", {"stem": "foo"}, r"stem='foo': expected one of imagenet, cifar"),
    ("resnet18", {"widths": [1, 2]}, r"widths=\[1, 2\]: expected a list of 4 positive integers"),
    ("resnet18", {"widths": [64, 128, 256, 0]}, r"expected a list of 4 positive integers"),
    ("resnet18", {"pretrained": "/etc/passwd"}, r"resnet18 has no argument 'pretrained'"),
    ("resnet18", {"zero_init_residual": "yes"}, r"expected true or false"),
    ("resnet9", {"activation": "tanh"}, r"activation='tanh': expected one of relu, gelu"),
    ("resnet9", {"bn_momentum": -0.1}, r"bn_momentum=-0.1: expected a positive number"),
])
def test_model_arguments_are_validated(name, kwargs, message):
    from resnetlab.models import build_model
    with pytest.raises(UserError, match=message):
        build_model(name, 10, kwargs)


def test_a_new_family_is_a_class_and_a_registered_factory(monkeypatch, tiny_cifar, tmp_path):
    """The model contract: a family that subclasses ClassifierNet and registers a plain factory gets argument
    checks from its signature, features_only, the fine-tuning freeze policies and the training engine's use,
    with nothing else changed."""
    from typing import Literal

    from torch import nn

    from resnetlab.errors import UserError
    from resnetlab.models import ClassifierNet, apply_strategy, build_model, create_model, register_model
    from resnetlab.models import registry

    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # the registration ends with the test

    class TwoStage(ClassifierNet):
        def __init__(self, num_classes: int = 10, width: int = 8, act: Literal["relu", "gelu"] = "relu") -> None:
            super().__init__()
            a = nn.ReLU() if act == "relu" else nn.GELU()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), a)
            self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), a)
            self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), a)
            self.num_features = 2 * width
            self.fc = nn.Linear(2 * width, num_classes)

        def stages(self):
            return [self.layer1, self.layer2]

        def feature_plan(self):
            return [("stem", ["stem"]), ("layer1", ["layer1"]), ("layer2", ["layer2"])]

        def forward_features(self, x):
            return self.layer2(self.layer1(self.stem(x)))

        def forward_head(self, x, pre_logits=False):
            x = x.mean((2, 3))
            return x if pre_logits else self.fc(x)

        def get_classifier(self):
            return self.fc

        def reset_classifier(self, num_classes):
            self.fc = nn.Linear(self.num_features, num_classes)

    @register_model(family="cifar", builds=TwoStage)
    def two_stage_net(num_classes: int = 10, **kwargs):
        return TwoStage(num_classes, **kwargs)

    assert set(registry.get_spec("two_stage_net").args) == {"width", "act"}
    with pytest.raises(UserError, match=r"act='tanh': expected one of relu, gelu"):
        build_model("two_stage_net", 10, {"act": "tanh"})
    with pytest.raises(UserError, match=r"width=0: expected a positive integer"):
        build_model("two_stage_net", 10, {"width": 0})
    model = build_model("two_stage_net", 5, {"width": 4, "act": "gelu"})
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    assert [f["reduction"] for f in model.feature_info] == [1, 2, 4]
    body = create_model("two_stage_net", features_only=True, out_indices=(1, 2), width=4)
    assert [o.shape[1] for o in body(torch.zeros(1, 3, 16, 16))] == [4, 8]
    apply_strategy(model, "partial", unfreeze_stages=1)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"layer2", "fc"}
    import resnetlab
    results = resnetlab.train(resnetlab.Recipe(), out=tmp_path / "run", data_dir=tiny_cifar, log=lambda *a, **k: None,
                              overrides={"model.name": "two_stage_net", "model.kwargs": {"width": 4}, "train.epochs": 1,
                                         "train.batch_size": 20, "train.eval_batch_size": 40, "data.val_size": 40,
                                         "train.precision": "fp32", "data.verify": False})
    assert results["model"] == "two_stage_net" and results["epochs"] == 1
