"""The zoo: ResNeXt, wide ResNets and squeeze-and-excitation, and one test over every registered model so
that a family cannot be added half-way (build, forward, feature maps, dilation, stochastic depth, separable
blocks, SE, fine-tuning strategies, ONNX export parity and the classifier the service runs)."""
from __future__ import annotations

import pytest
import torch
import torchvision

import resnetlab
from resnetlab.evaluation.profile import count_params
from resnetlab.models import ClassifierNet, apply_strategy, get_spec, list_models
from resnetlab.models.resnet import ResNet

PARAMS = {  # torchvision's published counts (1000 classes) and the papers' CIFAR nets (10 classes)
    ("resnext50_32x4d", 1000): 25_028_904, ("resnext101_32x8d", 1000): 88_791_336,
    ("resnext101_64x4d", 1000): 83_455_272, ("wide_resnet50_2", 1000): 68_883_240,
    ("wide_resnet101_2", 1000): 126_886_696, ("wrn28_10", 10): 36_479_194, ("wrn16_8", 10): 10_961_370,
}
TORCHVISION = ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def build_meta(name: str, num_classes: int, **kw) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: counting 127M parameters needs no memory
        return resnetlab.create_model(name, num_classes=num_classes, **kw)


@pytest.mark.parametrize("name,classes", list(PARAMS))
def test_zoo_param_counts(name, classes):
    assert count_params(build_meta(name, classes)) == PARAMS[(name, classes)]


def test_resnext29_param_counts_match_the_paper():
    """Xie et al. 2017, Table 7 (CIFAR): ResNeXt-29 8x64d 34.4M, 16x64d 68.1M parameters (rounded there)."""
    assert abs(count_params(build_meta("resnext29_8x64d", 10)) - 34.4e6) < 0.06e6
    assert abs(count_params(build_meta("resnext29_16x64d", 10)) - 68.1e6) < 0.1e6


def test_se_resnet50_adds_exactly_the_excitation_layers():
    """Counted independently: each bottleneck with C output channels adds two 1x1 convs with biases,
    C -> C/16 -> C (Hu et al. 2018), to ResNet-50's 25,557,032."""
    extra = sum(n * (2 * c * (c // 16) + c // 16 + c) for n, c in ((3, 256), (4, 512), (6, 1024), (3, 2048)))
    assert count_params(build_meta("seresnet50", 1000)) == 25_557_032 + extra == 28_088_024
    assert count_params(build_meta("resnet50", 1000, se_reduction=16)) == 28_088_024


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_loads_strictly_and_gives_equal_logits(name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    for m in ref.modules():  # non-trivial BN statistics, so every tensor takes part
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = resnetlab.create_model(name, num_classes=1000).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4
    from resnetlab.weights import torchvision_weight_entry
    assert torchvision_weight_entry(name).url.endswith(".pth")  # torchvision:NAME is offered for it


def test_block_dropout_acts_in_training_only():
    model = resnetlab.create_model("wrn16_4", block_dropout=0.3, widths=[16, 32, 64])
    x = torch.randn(4, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


# ------------------------------------------------------------------------------------ every model
def small(name: str) -> dict:
    """Arguments that keep a model tiny but of its own structure: narrow stages, the same depth and blocks."""
    spec = get_spec(name)
    return {"widths": [16 * 2 ** i for i in range(spec.n_stages)]} if spec.n_stages else {}


def size_of(name: str) -> int:
    return 64 if get_spec(name).family == "imagenet" else 32


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_gives_features_and_trains_under_every_option(name):
    spec = get_spec(name)
    s = size_of(name)
    x = torch.randn(2, 3, s, s)
    model = resnetlab.create_model(name, num_classes=3, **small(name))
    assert isinstance(model, ClassifierNet)
    assert model.eval()(x).shape == (2, 3)
    spatial = model.forward_features(x)
    assert spatial.ndim == 4 and spatial.shape[1] == model.num_features
    info = model.feature_info
    body = resnetlab.create_model(name, num_classes=3, features_only=True, **small(name))
    maps = body.eval()(x)
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in info[1:]] == body.feature_info.channels()
    assert [s // m.shape[-1] for m in maps] == [f["reduction"] for f in info[1:]]
    if model.supports_dilation:
        dilated = resnetlab.create_model(name, features_only=True, output_stride=8, **small(name))
        assert dilated.eval()(x)[-1].shape[-1] == s // min(8, info[-1]["reduction"])
    variants = [{"drop_path_rate": 0.2}]
    if "se_reduction" in spec.args:
        variants.append({"se_reduction": 4})
    grouped = isinstance(model, ResNet) and any(isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.in_channels
                                                for m in model.modules())
    if "block" in spec.args and not grouped:
        variants.append({"block": "separable"})
    for kw in variants:  # each option builds and takes a training step with finite gradients
        m = resnetlab.create_model(name, num_classes=3, **small(name), **kw).train()
        torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1])).backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None), kw
    ids = lambda mods: {id(p) for m in mods for p in m.parameters()}  # noqa: E731
    fixed = {id(p) for p in model.fixed_parameters()}
    head = ids([model.get_classifier()])
    expected = {"linear-probe": head, "partial": (head | ids([model.stages()[-1], *model.head_extras()])) - fixed,
                "full": ids([model]) - fixed}
    for strategy, want in expected.items():
        apply_strategy(model, strategy, unfreeze_stages=1)
        assert {id(p) for p in model.parameters() if p.requires_grad} == want, strategy


def _structure(name: str) -> tuple:
    """What an exporter sees of a model: its module types, grouped convs, SE, pre-activation."""
    model = resnetlab.create_model(name, num_classes=3, **small(name))
    kinds = {type(m).__name__ for m in model.modules()}
    grouped = any(isinstance(m, torch.nn.Conv2d) and 1 < m.groups for m in model.modules())
    return (type(model).__name__, tuple(sorted(kinds)), grouped, get_spec(name).family)


def _one_per_structure() -> list[str]:
    seen: dict[tuple, str] = {}
    for name in list_models():
        seen.setdefault(_structure(name), name)
    return sorted(seen.values())


@pytest.mark.parametrize("name", _one_per_structure())
def test_every_structure_exports_to_onnx_and_serves_what_pytorch_predicts(name, tmp_path):
    """One model per distinct structure (module types, grouped convs, family): a new family with a new kind
    of layer is exported here; one that reuses existing layers is covered by its twin."""
    pytest.importorskip("onnxruntime")
    from resnetlab.inference.export import export
    from resnetlab.training.runner import model_meta
    from resnetlab.weights import save_checkpoint
    s = size_of(name)
    torch.manual_seed(0)
    model = resnetlab.create_model(name, num_classes=3, **small(name)).eval()
    meta = model_meta(name, small(name), ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3, s, None)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, model.state_dict(), meta.to_dict())
    pixels = torch.randint(0, 256, (4, 3, s, s), dtype=torch.uint8)
    path, check = export(ckpt, "onnx", pixels, log=lambda *a, **k: None)
    assert path.is_file() and check.top1_agreement == 1.0 and check.max_abs_diff <= 1e-4
    torch_clf, onnx_clf = resnetlab.load(ckpt), resnetlab.load(path)
    image = pixels[0].permute(1, 2, 0).numpy()
    a, b = torch_clf.predict([image], top_k=3)[0]["top"], onnx_clf.predict([image], top_k=3)[0]["top"]
    assert [t["class"] for t in a] == [t["class"] for t in b]
