"""Feature maps for detection and segmentation backbones, torchvision integration, separable blocks."""
from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN
from torchvision.models.segmentation import DeepLabV3, FCN
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

import resnetlab
from resnetlab import UserError
from resnetlab.cli import main
from resnetlab.models.backbones import FPNBackbone, NamedFeatures



@pytest.mark.parametrize("name, kwargs, size, channels, reductions", [
    ("resnet50", {}, 64, [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    ("resnet18", {"stem": "cifar"}, 32, [64, 64, 128, 256, 512], [1, 1, 2, 4, 8]),
    ("resnet20", {}, 32, [16, 16, 32, 64], [1, 1, 2, 4]),
    ("preact_resnet18", {}, 32, [64, 64, 128, 256, 512], [1, 1, 2, 4, 8]),
    ("resnet9", {"widths": [16, 32, 64, 128], "whiten": True}, 32, [16, 32, 64, 128], [1, 2, 4, 8]),
])
def test_feature_maps_of_every_family(name, kwargs, size, channels, reductions):
    levels = tuple(range(len(channels)))
    body = resnetlab.create_model(name, features_only=True, out_indices=levels, **kwargs).eval()
    assert body.feature_info.channels() == channels and body.feature_info.reduction() == reductions
    feats = body(torch.randn(2, 3, size, size))
    assert [tuple(f.shape) for f in feats] == [(2, c, size // r, size // r) for c, r in zip(channels, reductions)]
    default = resnetlab.create_model(name, features_only=True, **kwargs)
    assert default.out_indices == levels[1:]  # all stages unless asked


def _torchvision_resnet50(**kw) -> torchvision.models.ResNet:
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None, **kw)
    with torch.no_grad():  # trained-looking BN statistics, so the comparison is not of identity BNs
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return tv.eval()


@pytest.mark.parametrize("dilated", [False, True])
def test_features_equal_torchvision_intermediate_layers(tmp_path, dilated):
    kw = {"replace_stride_with_dilation": [False, True, True]} if dilated else {}
    tv = _torchvision_resnet50(**kw)
    path = tmp_path / "tv_resnet50.pth"
    torch.save(tv.state_dict(), path)
    ours = resnetlab.create_model("resnet50", num_classes=1000, pretrained=str(path), features_only=True,
                                  out_indices=(1, 2, 3, 4), output_stride=8 if dilated else None).eval()
    getter = IntermediateLayerGetter(tv, {f"layer{i}": str(i) for i in range(1, 5)})
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = list(getter(x).values())
        got = ours(x)
    assert [f.shape for f in got] == [f.shape for f in want]
    diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
    assert diff <= 1e-5, diff
    assert ours.feature_info.reduction() == ([4, 8, 8, 8] if dilated else [4, 8, 16, 32])


def test_faster_rcnn_with_our_resnet50_fpn_trains_and_detects():
    torch.manual_seed(0)
    body = resnetlab.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    body.set_trainable(3, frozen_bn=True)  # as torchvision's detection default: stem + layer1 frozen
    model = FasterRCNN(FPNBackbone(body, out_channels=64), num_classes=3, min_size=128, max_size=128)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 50.0, 60.0], [60.0, 40.0, 100.0, 110.0]]),
                "labels": torch.tensor([2, 1])}]
    model.train()
    assert all(not m.training for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d))
    losses = model(images, targets)
    total = sum(losses.values())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert torch.isfinite(total)
    total.backward()
    assert body.conv1.weight.grad is None and body.layer1[0].conv1.weight.grad is None  # frozen
    assert body.layer4[0].conv1.weight.grad is not None and body.layer4[0].bn1.weight.grad is None
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    assert out[0]["boxes"].shape[0] == out[0]["labels"].shape[0] == out[0]["scores"].shape[0]


@pytest.mark.parametrize("head", ["fcn", "deeplabv3"])
def test_segmentation_heads_on_our_dilated_resnet50(head):
    torch.manual_seed(0)
    body = resnetlab.create_model("resnet50", features_only=True, out_indices=(3, 4), output_stride=8)
    backbone = NamedFeatures(body, ["aux", "out"])
    classes = 5
    if head == "fcn":
        model = FCN(backbone, FCNHead(2048, classes), FCNHead(1024, classes))
    else:
        model = DeepLabV3(backbone, DeepLabHead(2048, classes), FCNHead(1024, classes))
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, classes, (2, 64, 64))
    model.train()
    out = model(x)
    loss = torch.nn.functional.cross_entropy(out["out"], target) + 0.5 * torch.nn.functional.cross_entropy(
        out["aux"], target)
    assert torch.isfinite(loss)
    loss.backward()
    assert body.layer4[2].conv2.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out["out"].shape == (2, classes, 64, 64) and out["aux"].shape == (2, classes, 64, 64)
    assert body.feature_info.reduction() == [8, 8]


def test_features_from_a_resnetlab_checkpoint(small_checkpoint):
    model, _ = resnetlab.load_model(small_checkpoint)
    body, meta = resnetlab.load_model(small_checkpoint, features_only=True, out_indices=(1, 2, 3))
    assert meta.arch == "resnet20" and body.feature_info.channels() == [16, 32, 64]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pooled = body(x)[-1].mean((2, 3))
        assert torch.allclose(body(x)[-1], model.forward_features(x), atol=1e-6)  # the last spatial map
        assert torch.allclose(pooled, model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-6)


def test_trainable_stages_and_frozen_bn_share_the_freeze_policy():
    body = resnetlab.create_model("resnet18", features_only=True).set_trainable(2, frozen_bn=False)
    trains = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trains == {"layer3", "layer4"}
    body.train()
    assert not body.layer1[0].bn1.training and body.layer4[0].bn1.training  # frozen parts keep BN statistics
    body.set_trainable(None, frozen_bn=True).train()
    assert all(not m.training and not m.weight.requires_grad for m in body.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    assert body.conv1.weight.requires_grad
    body.set_trainable(5)  # one more than the stages: the stem too
    assert all(p.requires_grad for p in body.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"out_indices": (5,)}, "out_indices must be increasing, distinct levels in 0..4"),
    ({"out_indices": (3, 1)}, "out_indices must be increasing"),
    ({"output_stride": 12}, "output_stride must be a power of two from 4"),
    ({"out_indices": (1,), "features_only": False}, "need features_only=True"),
])
def test_bad_feature_options_are_one_line(kwargs, message):
    kwargs.setdefault("features_only", True)
    with pytest.raises(UserError, match=re.escape(message)):
        resnetlab.create_model("resnet18", **kwargs)
    with pytest.raises(UserError, match="not available for ResNet9"):
        resnetlab.create_model("resnet9", features_only=True, output_stride=8)
    with pytest.raises(UserError, match="trainable_stages must be between 0 and 5"):
        resnetlab.create_model("resnet18", features_only=True).set_trainable(7)


def test_separable_block_is_cheaper_and_trains(capsys, tiny_cifar, tmp_path):
    std = resnetlab.create_model("resnet20")
    sep = resnetlab.create_model("resnet20", block="separable")
    n_std, n_sep = (sum(p.numel() for p in m.parameters()) for m in (std, sep))
    assert n_sep < n_std / 4
    convs = [m for m in sep.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert all(m.groups == m.in_channels for m in convs[1:])  # every 3x3 after the stem is depthwise
    for name, kw in (("resnet50", {}), ("resnet9", {"widths": [16, 32, 64, 128]}), ("preact_resnet18", {})):
        m = resnetlab.create_model(name, block="separable", **kw)
        size = 64 if name == "resnet50" else 32
        out = m(torch.randn(2, 3, size, size))
        out.sum().backward()
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "resnet20 (block=separable)" in table and "resnet50 (block=separable)" in table
    # trainable with a recipe: the default one, separable blocks, on tiny data
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "sep"), "--no-progress",
                 "data.verify=false", "model.kwargs.block=separable", "train.epochs=1", "train.batch_size=50",
                 "train.precision=fp32"]) == 0
    model, meta = resnetlab.load_model(tmp_path / "sep" / "best.safetensors")
    assert meta.kwargs["block"] == "separable" and model.layer3[1].conv1[0].groups == 128
