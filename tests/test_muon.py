"""optim.name=muon: Muon on the conv filters, SGD on the rest, in one optimizer."""
import json

import pytest
import torch
from torch import nn

from resnetlab.cli import main
from resnetlab.training.config import OptimConfig
from resnetlab.training.optim import Muon, build_optimizer, optimizer_step_flops, orthogonalize, param_groups
from resnetlab.weights import optimizer_from_flat, optimizer_to_flat


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def loss_of(net: nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)
    return nn.functional.cross_entropy(net(x), y)


def muon_cfg(**kw) -> OptimConfig:
    return OptimConfig(name="muon", lr=0.1, momentum=0.85, nesterov=True, weight_decay=5e-4,
                       no_decay_bn_bias=True, muon_lr=0.24, muon_momentum=0.6, muon_ns_steps=3, **kw)


def test_orthogonalize_moves_singular_values_near_one_in_either_orientation():
    g = torch.randn(64, 288, generator=torch.Generator().manual_seed(1)) * 3.0
    s = torch.linalg.svdvals(orthogonalize(g, 5))
    assert s.min() > 0.6 and s.max() < 1.25, s
    assert torch.allclose(orthogonalize(g.T, 5), orthogonalize(g, 5).T, atol=1e-5)
    s_raw = torch.linalg.svdvals(g)
    assert s_raw.max() / s_raw.min() > 2.5  # the input was far from orthogonal


def test_muon_groups_hold_the_filters_at_muon_lr_without_decay():
    net = small_net()
    groups = param_groups(net, muon_cfg())
    filters = [g for g in groups if g["muon"]]
    assert len(filters) == 1 and len(filters[0]["params"]) == 2
    assert filters[0]["lr"] == pytest.approx(0.24) and filters[0]["weight_decay"] == 0.0
    rest = [p for g in groups if not g["muon"] for p in g["params"]]
    assert all(p.ndim < 4 for p in rest) and len(rest) == 4 + 2  # BN weights/biases, linear weight/bias
    assert {g["weight_decay"] for g in groups if not g["muon"]} == {0.0, 5e-4}
    assert all("muon" not in g for g in build_optimizer(param_groups(net, OptimConfig()), OptimConfig()).param_groups)


def test_bias_lr_sets_the_peak_lr_of_bn_parameters_and_biases_only():
    net = small_net()
    lr_of = {id(p): g["lr"] for g in param_groups(net, muon_cfg(bias_lr=5.0)) for p in g["params"]}
    assert [lr_of[id(p)] for p in net.parameters()] == pytest.approx([0.24, 5.0, 5.0, 0.24, 5.0, 5.0, 0.1, 5.0])
    sgd = param_groups(net, OptimConfig(lr=0.1, bias_lr=0))  # 0: optim.lr for everything
    assert {g["lr"] for g in sgd} == {0.1}


def test_a_muon_step_renormalises_then_follows_the_orthogonalised_nesterov_momentum():
    net, ref = small_net(), small_net()
    cfg = muon_cfg()
    opt = build_optimizer(param_groups(net, cfg), cfg)
    sgd = torch.optim.SGD([g for g in param_groups(ref, cfg) if not g["muon"]], lr=cfg.lr, momentum=0.85,
                          nesterov=True)
    assert isinstance(opt, Muon)
    for seed in range(2):
        before = net[3].weight.detach().clone()
        buf = opt.state[net[3].weight].get("momentum_buffer")
        opt.zero_grad()
        sgd.zero_grad()
        loss_of(net, seed).backward()
        loss_of(ref, seed).backward()
        grad = net[3].weight.grad.clone()
        buf = grad.clone() if buf is None else buf * 0.6 + grad
        d = grad + 0.6 * buf
        expected = before * (16 ** 0.5 / before.norm()) - 0.24 * orthogonalize(d.reshape(16, -1), 3).view_as(d)
        opt.step()
        sgd.step()
        assert torch.allclose(net[3].weight, expected, atol=1e-6)
        for name in ("1.weight", "1.bias", "8.weight", "8.bias"):  # the non-filter params: torch's SGD exactly
            assert torch.equal(dict(net.named_parameters())[name], dict(ref.named_parameters())[name]), name
        with torch.no_grad():  # the reference takes the same filters into the next step
            ref[0].weight.copy_(net[0].weight)
            ref[3].weight.copy_(net[3].weight)


def test_muon_state_round_trips_through_the_checkpoint_format_exactly():
    cfg = muon_cfg()
    net = small_net()
    opt = build_optimizer(param_groups(net, cfg), cfg)
    for seed in range(3):
        opt.zero_grad()
        loss_of(net, seed).backward()
        opt.step()
    twin = small_net()
    twin.load_state_dict(net.state_dict())
    twin_opt = build_optimizer(param_groups(twin, cfg), cfg)
    info, tensors = optimizer_to_flat(opt)  # copies, as a checkpoint file gives them
    optimizer_from_flat(twin_opt, json.loads(json.dumps(info)), {k: v.clone() for k, v in tensors.items()})
    for o, n in ((opt, net), (twin_opt, twin)):
        o.zero_grad()
        loss_of(n, 7).backward()
        o.step()
    for (k, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), k


def test_muon_step_flops_count_the_newton_schulz_matmuls():
    cfg = muon_cfg()
    net = small_net()
    opt = build_optimizer(param_groups(net, cfg), cfg)
    # 8x27 and 16x72 matrices (m <= n), 3 iterations of X X^T, (X X^T)^2 and (...) X
    expected = 3 * 2 * ((2 * 8 * 8 * 27 + 8 ** 3) + (2 * 16 * 16 * 72 + 16 ** 3))
    assert optimizer_step_flops(opt) == expected
    assert optimizer_step_flops(torch.optim.SGD(net.parameters(), lr=0.1)) == 0


def test_training_with_muon_learns(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "cifar10_quick", "--data-dir", str(tiny_cifar), "--out", str(out),
                 "--no-progress", "--no-verify", "train.epochs=4", "train.tta=false", "optim.name=muon",
                 "optim.lr=0.05", "train.batch_size=20", "data.val_size=40", "train.precision=fp32",
                 "data.augment.epoch_sizes=[]"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["test"]["top1"] > 0.5  # synthetic classes; chance is 0.1
    assert main(["train", "--recipe", "cifar10_quick", "--out", str(tmp_path / "bad"), "optim.muon_momentum=1"]) == 2
    assert "optim.muon_momentum" in capsys.readouterr().err
