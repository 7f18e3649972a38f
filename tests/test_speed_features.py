"""The pieces the fast recipes are made of: shifted TTA, evaluation every N epochs, the
training compute each run prints, the airbench-ordered pooling layers."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SGD_DEFAULT  # the model's FLOPs only: Muon adds its own (test_muon)
from resnetlab import UserError
from resnetlab.cli import main
from resnetlab.evaluation.metrics import evaluate, tta_views
from resnetlab.evaluation.profile import count_macs, count_train_flops
from resnetlab.models import build_model
from resnetlab.training.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_tta_views_are_the_mirror_and_reflect_shifted_copies():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    two = tta_views(x, 0)
    assert len(two) == 2 and torch.equal(two[0], x) and torch.equal(two[1], x.flip(3))
    six = tta_views(x, 2)
    assert len(six) == 6 and all(v.shape == x.shape for v in six)
    down_right, up_left = six[2], six[4]
    # content moves by +2 / -2 pixels on both axes; the uncovered border is the reflection
    assert torch.equal(down_right[..., 2:, 2:], x[..., :-2, :-2])
    assert torch.equal(up_left[..., :-2, :-2], x[..., 2:, 2:])
    assert torch.equal(down_right[..., 0, 2:], x[..., 2, :-2])  # reflect padding, not zeros
    assert torch.equal(six[3], down_right.flip(3)) and torch.equal(six[5], up_left.flip(3))


class _Loader(list):
    pass


def test_evaluate_with_shift_averages_the_six_softmaxes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x, y = torch.randn(7, 3, 8, 8), torch.randint(0, 5, (7,))
    res = evaluate(model, _Loader([(x, y)]), 5, tta=True, tta_shift=1)
    with torch.no_grad():
        probs = sum(model(v).softmax(1) for v in tta_views(x, 1)) / 6
    assert res.top1 == pytest.approx((probs.argmax(1) == y).float().mean().item())
    assert res.loss == pytest.approx(F.nll_loss(probs.log(), y).item(), rel=1e-5)
    plain = evaluate(model, _Loader([(x, y)]), 5, tta=True, tta_shift=0)
    with torch.no_grad():
        p2 = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
    assert plain.loss == pytest.approx(F.nll_loss(p2.log(), y).item(), rel=1e-5)


def test_eval_every_skips_monitoring_and_the_run_prints_its_training_compute(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", SGD_DEFAULT, "--data-dir", str(tiny_cifar),
                 "--out", str(out), "--no-progress", "--no-verify", "train.epochs=4", "train.eval_every=3",
                 "train.batch_size=20", "train.eval_batch_size=40", "train.precision=fp32", "train.tta_shift=1",
                 "model.kwargs.pool_first=true", "data.augment.epoch_sizes=[]"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] is not None for r in rows] == [False, False, True, True]  # every 3rd, and the last
    assert "test (monitoring)" not in printed.split("epoch 2/4")[1].split("\n")[0]
    res = json.loads((out / "results.json").read_text())
    model = build_model("resnet9", 10, {"widths": [16, 32, 64, 128], "whiten": True, "pool_first": True})
    macs = count_macs(model, 32)
    assert res["macs"] == macs
    images = res["steps"] * 20  # drop_last: every step is a full batch
    assert res["steps"] == 4 * (200 // 20)
    assert res["train_pflop"] == pytest.approx(count_train_flops(model, 32) * images / 1e15)
    assert rows[-1]["train_pflop"] == res["train_pflop"] and rows[0]["train_pflop"] == pytest.approx(res["train_pflop"] / 4)
    assert f"{res['train_pflop']:.3f} PFLOP]" in printed


def test_training_flops_come_from_a_real_backward():
    """Forward, input gradient, weight gradient per layer — minus what autograd skips: the weight gradient of
    a frozen layer and every input gradient below the lowest trainable layer."""
    from torch import nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 10))
    f1, f12, fwd = (2 * count_macs(m, 8) for m in (net[0], net[:3], net))
    f2, f3 = f12 - f1, fwd - f12  # each layer's forward FLOPs
    assert count_train_flops(net, 8) == fwd + f1 + 2 * f2 + 2 * f3  # no input gradient for the first layer
    net[0].requires_grad_(False)
    assert count_train_flops(net, 8) == fwd + f2 + 2 * f3
    net[2].requires_grad_(False)
    assert count_train_flops(net, 8) == fwd + f3  # a linear probe: only the head's weight gradient
    assert net.training and all(p.grad is None for p in net.parameters())


def test_eval_every_thins_out_monitoring_only(tiny_cifar, tmp_path):
    """With a validation split every epoch is evaluated (selection, early stopping and pruning read it)."""
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", "--no-verify",
                 "model.name=resnet20", "train.epochs=3", "train.eval_every=5", "train.batch_size=20",
                 "data.val_size=40", "train.precision=fp32", "data.augment.epoch_sizes=[]"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_split"] for r in rows] == ["val"] * 3 and all(r["val_top1"] is not None for r in rows)
    with pytest.raises(UserError, match="train.tta_shift: must be in \\[0, 8\\]"):
        load_recipe("cifar10_quick", ["train.tta_shift=9"])


def test_pool_first_orders_pool_before_bn_and_keeps_the_parameters():
    a = build_model("resnet9", 10, {"widths": [8, 16, 32, 64]})
    b = build_model("resnet9", 10, {"widths": [8, 16, 32, 64], "pool_first": True})
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    assert [type(m).__name__ for m in b.layer2] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in a.layer2] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert b(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # BN then sees the pooled map: a quarter of the activations at that layer
    seen = {}
    b.layer2[2].register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape))
    b(torch.zeros(2, 3, 32, 32))
    assert seen["shape"] == (2, 32, 8, 8)


def test_alternating_flips_mirror_each_image_every_other_epoch():
    from resnetlab.data import AugmentConfig, BatchLoader, ImageSet
    n = 64
    # each image is a left-to-right ramp tagged with its index, so a mirror is visible in the output
    ramp = torch.arange(8, dtype=torch.uint8).expand(n, 3, 8, 8).clone()
    ramp[:, 1] = torch.arange(n, dtype=torch.uint8)[:, None, None]
    ds = ImageSet(ramp, torch.zeros(n, dtype=torch.long), ["a"])
    aug = AugmentConfig(crop_padding=0, flip=True, flip_mode="alternate")
    loader = BatchLoader(ds, 16, (0.0,) * 3, (1.0,) * 3, train=True, augment=aug, seed=3)

    def mirrored(epoch: int) -> dict[int, bool]:
        loader.set_epoch(epoch)
        seen = {}
        for x, _ in loader:
            for img in x:
                seen[round(255 * img[1, 0, 0].item())] = bool(img[0, 0, 0] > img[0, 0, -1])
        return seen

    e0, e1, e2 = mirrored(0), mirrored(1), mirrored(2)
    assert len(e0) == n and 0.25 < sum(e0.values()) / n < 0.75  # a random half in the first epoch
    assert all(e1[i] != e0[i] for i in range(n)) and e2 == e0  # then the other half, and back
    with pytest.raises(UserError, match=r"data.augment.epoch_sizes: expected numbers, each in \[8, 4096\], got \[16, 4\]"):
        load_recipe("cifar10_quick", ["data.augment.epoch_sizes=[16,4]"])
    with pytest.raises(UserError, match="data.augment.flip_mode: 'sometimes' is not allowed"):
        load_recipe("cifar10_quick", ["data.augment.flip_mode=sometimes"])


def test_progressive_resizing_trains_early_epochs_small_and_counts_their_compute(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--recipe", SGD_DEFAULT, "--data-dir", str(tiny_cifar),
                 "--out", str(out), "--no-progress", "--no-verify", "train.epochs=3", "train.batch_size=20",
                 "train.eval_batch_size=40", "train.precision=fp32", "data.augment.epoch_sizes=[24,24]", "data.augment.flip_mode=alternate"]) == 0
    res = json.loads((out / "results.json").read_text())
    model = build_model("resnet9", 10, {"widths": [16, 32, 64, 128], "whiten": True})
    small, full = count_macs(model, 24), count_macs(model, 32)
    assert small < 0.6 * full
    t_small, t_full = count_train_flops(model, 24), count_train_flops(model, 32)
    assert res["train_pflop"] == pytest.approx(200 * (2 * t_small + t_full) / 1e15)
    assert res["macs"] == full  # the model as tested: full size

    # a run shorter than the schedule still ends on full-size images: 3 epochs of [16, 16, 24, 24, 24] → 16, 16, 32
    short = tmp_path / "short"
    assert main(["train", "--recipe", SGD_DEFAULT, "--data-dir", str(tiny_cifar),
                 "--out", str(short), "--no-progress", "--no-verify", "train.epochs=3", "train.batch_size=20",
                 "train.eval_batch_size=40", "train.precision=fp32", "data.augment.epoch_sizes=[16,16,24,24,24]"]) == 0
    t_tiny = count_train_flops(model, 16)
    assert json.loads((short / "results.json").read_text())["train_pflop"] == pytest.approx(200 * (2 * t_tiny + t_full) / 1e15)


def test_loader_epoch_size_follows_the_schedule():
    from resnetlab.data import AugmentConfig, BatchLoader, ImageSet
    ds = ImageSet(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ["a"])
    loader = BatchLoader(ds, 4, (0.0,) * 3, (1.0,) * 3, train=True,
                         augment=AugmentConfig(epoch_sizes=(20,)))
    loader.set_epoch(0)
    assert next(iter(loader))[0].shape == (4, 3, 20, 20) and loader.epoch_size(1) is None
    loader.set_epoch(1)
    assert next(iter(loader))[0].shape == (4, 3, 32, 32)


def test_lookahead_pull_rises_with_the_cube_of_progress_and_ends_on_the_slow_copy():
    from resnetlab.training.optim import Lookahead
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    la = Lookahead(net, every=5, decay=0.9)
    assert la.pull(3, 100) is None and la.pull(100, 100) == 1.0
    assert la.pull(50, 100) == pytest.approx(0.9 ** 5 * 0.5 ** 3)
    assert set(la.slow) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    start = {k: v.clone() for k, v in la.slow.items()}
    with torch.no_grad():  # the fast net moves (weights and BN statistics alike)
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.add_(1.0)
    la.update(net, 3, 100)  # not a multiple of 5: nothing happens
    assert torch.equal(net[0].weight, start["0.weight"] + 1)
    la.update(net, 50, 100)
    d = 0.9 ** 5 * 0.5 ** 3
    for k, v in net.state_dict().items():
        if k in start:  # slow moved by 1 - d toward fast, and fast restarts from it
            assert torch.allclose(v, start[k] + (1 - d)), k
            assert torch.equal(v, la.slow[k]), k
    with torch.no_grad():
        net[0].weight.add_(5.0)
    la.update(net, 100, 100)  # the last step: the net is the slow copy, whatever the fast weights did
    assert torch.equal(net[0].weight, la.slow["0.weight"])
    assert torch.allclose(net[0].weight, start["0.weight"] + (1 - d))


def test_lookahead_run_records_its_state_for_resume(tiny_cifar, tmp_path):
    from resnetlab.weights import read_full
    out = tmp_path / "la"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", "data.verify=false",
                 "model.name=resnet20", "train.epochs=2", "train.batch_size=10", "data.val_size=20",
                 "train.precision=fp32", "train.lookahead_every=2"]) == 0
    weights, _meta, _resume, extra = read_full(out / "last.safetensors")
    slow = {k[len("lookahead/"):]: v for k, v in extra.items() if k.startswith("lookahead/")}
    assert slow and all(torch.equal(weights[k], v) for k, v in slow.items())  # ended on the slow copy


def test_dirac_init_starts_the_first_filters_as_the_identity():
    plain = build_model("resnet9", 10, {"widths": [8, 16, 32, 64]})
    model = build_model("resnet9", 10, {"widths": [8, 16, 32, 64], "dirac": True})
    conv = model.layer1[1].conv1  # 16 → 16 inside the residual block
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(F.conv2d(x, conv.weight, padding=1), x, atol=1e-6)
    c = model.layer1[0][0]  # 8 → 16: the first 8 output channels copy the input, the rest stay random
    xi = torch.randn(2, 8, 8, 8)
    y = F.conv2d(xi, c.weight, padding=1)
    assert y.shape[1] == 16 and torch.allclose(y[:, :8], xi, atol=1e-6)
    assert c.weight[8:].abs().sum() > 0 and not torch.allclose(y[:, 8:], xi, atol=1e-2)
    assert not torch.allclose(F.conv2d(x, plain.layer1[1].conv1.weight, padding=1), x, atol=1e-2)
