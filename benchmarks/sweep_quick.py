"""The lab, not the product: the accuracy sweeps that chose the bundled recipes (photo-artefact augmentation and
candidate changes on a validation split). An experiment log kept runnable so that the experiments in docs/results/
can be repeated; sweep names are kept as the docs cite them. Nothing in resnetlab imports it.

    RESNETLAB_DATA=... python benchmarks/sweep_quick.py SWEEP [SWEEP ...] [--only NAME ...] [--seeds 0 1]
                                                        [--workers N] [--out DIR]

Sweeps (each a set of named override lists, run with several seeds):
  rob13  artefact augmentations on an earlier default (label smoothing 0.2, 16/16/24/24/24 px), 2 seeds,
         all 50k training images; then benchmarks/robustness.py on each final model (CPU inference, no TTA).
         Run on a lent H200 with --workers 17.
  val13  candidate recipe changes on a 45k/5k validation split, 3 seeds; the figure read is the last epoch's
         validation top-1 (the test figures are recorded but choose nothing). Run there too.
  val11  the default with and without resampling augmentation on a 45k/5k validation split, 2 seeds;
         robustness.py on the 5k held-out images (--split val): the choice of the default is made there.
  rob11  artefact augmentations on the full training set, robustness on the
         test set (reporting only). "none" and "r30" are the default recipe before and after val11's choice;
         "j50q30r30e20" is the cifar10_quick_robust recipe.
  val11b after val11, on the same validation split, seed 0: a softer whitening (whiten_eps), JPEG settings at
         10 epochs, and the JPEG-augmented recipe at 15, 20 and 30 epochs (how much time the bound needs).
  muon94 the fast94 net trained with Muon on its filters at about half fast94's compute (<= 0.29 PFLOP on all
         50k images), on a 45k/5k validation split, seed 0; the figure read is the last epoch's validation
         top-1. Each sweep names its recipe (the fast94 sweeps: the 18-epoch SGD fast94 they started from, pinned
         as benchmarks/recipes/cifar10_fast94_v1.yaml); the others ran on the SGD default, pinned as
         benchmarks/recipes/cifar10_quick_v2.yaml.
  muon94b the same budget with fast94's SGD, and Muon on 7 epochs at full size, seed 0.
  muonq  the default recipe with and without Muon on the same validation split, seed 0.
  q92    after muonq, seed 0, same split: Muon's filter lr, 2-px translations, batch 250.
  q92b   after q92 (Muon + 2-px translations): batch 1000, more low-resolution epochs, the SGD groups' lr,
         label smoothing 0.2.
  robm   cifar10_quick_robust's settings with SGD (as bundled) and with the Muon default's, seed 0, same split;
         robustness.py on the 5k held-out images.
  air    airbench94_muon's GELU and BatchNorm settings (frozen scales, momentum, eps) on the Muon default,
         2 seeds, same split.
  air2   after air: the BN biases' own lr (optim.bias_lr), with frozen BN scales, 2 seeds, same split.
  f29air f29's two schedules with air's GELU and frozen BN scales, seed 0, same split.
  f29air2 after f29air, its m10: whitening eps 5e-4, batch 1000, seed 0, same split.
  f29ab  after f29air2: airbench94_muon's whitening stem on f29air/m10, and with 12 epochs at the same compute, 2 seeds.
  f29la  after f29ab: Lookahead on f29air/m10, seed 0.
  f29b   after f29air2's bs1000: batch 2000, and batch 1000 with an 11th epoch at 16 px, seed 0.
  f29m   after f29b: on bs1000, Muon at lr 0.12 with momentum 0.7 (airbench's batch-1000 setting), 2 seeds.
  q92c   the fast94 net at half width with fast94's GELU and frozen BN scales in the default's time, seed 0, same
         split.
  q92d   after air: the default with GELU and frozen BN scales in 9 epochs (4 or 3 at 32 px) to fit its time, 2 seeds,
         same split.
  r18    the default's Muon settings on cifar10_resnet18_10ep's SGD recipe (pinned as
         benchmarks/recipes/cifar10_resnet18_10ep_v1.yaml), in a 4-epoch proxy, seed 0, same split.
  r18air after r18: airbench94_muon's GELU and frozen BN scales on cifar10_resnet18_10ep with Muon (pinned as
         benchmarks/recipes/cifar10_resnet18_10ep_v2.yaml) in the same proxy, seed 0, same split.
  f29    the fast94 net with q92's Muon settings at <= 0.29 PFLOP, seed 0, same split: 10 epochs with progressive
         resizing (m10, m10pad2) or 7 at full size (m7full).

With --workers > 1 the runs share the machine, so their times mean nothing; with --workers 1 (the default; a
2-core CPU) they run one after another and the training minutes are comparable. Prints one JSON line per run
and a table of means; writes OUT/sweep.json (default benchmarks/out/sweep_quick).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import HERE, RunFailed, run

# every sweep of the default ran on the one-cycle SGD default, pinned there (its overrides add Muon where they do)
RECIPE = str(HERE / "recipes" / "cifar10_quick_v2.yaml")
FAST94_V1 = str(HERE / "recipes" / "cifar10_fast94_v1.yaml")  # the fast94 recipe these sweeps started from
R18_V1 = str(HERE / "recipes" / "cifar10_resnet18_10ep_v1.yaml")  # the SGD ResNet-18 recipe sweep r18 started from
R18_V2 = str(HERE / "recipes" / "cifar10_resnet18_10ep_v2.yaml")  # its Muon successor, which sweep r18air started from
QUICK_V3 = str(HERE / "recipes" / "cifar10_quick_v3.yaml")  # the Muon default that sweeps air, air2, q92c, q92d vary
# the ResNet-18 sweeps' 4-epoch proxy on the 45k/5k split: 1 epoch at 16 px, 1 at 24, 2 at 32
R18_PROXY = ["data.val_size=5000", "train.epochs=4", "data.augment.epoch_sizes=[16,24]", "train.eval_every=4"]
MUON_Q = ["optim.name=muon", "optim.momentum=0.85", "train.batch_size=500", "optim.lr=0.4", "schedule.pct_start=0"]
JPEG30 = ["data.augment.jpeg=0.5", "data.augment.jpeg_quality=[30,95]", "data.augment.resample=0.3"]
GELU = "model.kwargs.activation=gelu"
AIR_BN = ["model.kwargs.bn_frozen_scale=true", "model.kwargs.bn_momentum=0.4", "model.kwargs.bn_eps=1e-12"]
# the fast94 net on the validation split with airbench94_muon's net settings and the default's Muon (sweeps f29air...)
F29AIR = ["data.val_size=5000", "train.eval_every=5", "data.augment.crop_padding=2", GELU] + AIR_BN + MUON_Q
M10 = ["train.epochs=10", "data.augment.epoch_sizes=[16,16,24,24,24,24]"]  # f29air/m10's schedule
BS1000 = ["train.batch_size=1000", "optim.lr=0.8"]  # f29air2/bs1000: the batch of cifar10_fast94_029
SWEEPS = {
    "rob13": {"kind": "rob", "seeds": (0, 1),
              # the default as it was when this ran (B's "ls0.1" is how it became 0.1; the third 16 px epoch
              # came after, for time)
              "base": ["train.label_smoothing=0.2", "data.augment.epoch_sizes=[16,16,24,24,24]",
                       "data.augment.resample=0"],
              "runs": {"none": [],
                       "j50q30r30": JPEG30,
                       "j30q50r20": ["data.augment.jpeg=0.3", "data.augment.jpeg_quality=[50,95]",
                                     "data.augment.resample=0.2"],
                       "j50q30r30from5": JPEG30 + ["data.augment.artifacts_from_epoch=5"]}},
    "val13": {"kind": "val", "seeds": (0, 1, 2),
              "base": ["train.label_smoothing=0.2", "data.augment.epoch_sizes=[16,16,24,24,24]",
                       "data.augment.resample=0", "data.val_size=5000"],
              "runs": {"base": [], "ls0.1": ["train.label_smoothing=0.1"],
                       "bs256": ["train.batch_size=256", "optim.lr=0.2"]}},
    # the choice for the default recipe, made on a 45k/5k validation split: robustness.py on the 5k held out
    "val11": {"kind": "rob", "seeds": (0, 1), "base": ["data.val_size=5000"], "split": "val",
              "runs": {"none": ["data.augment.resample=0"], "r30": ["data.augment.resample=0.3"],
                       # not in the 16 px epochs, where downscaling undoes most of the softening anyway
                       "r30from3": ["data.augment.resample=0.3", "data.augment.artifacts_from_epoch=3"]}},
    "rob11": {"kind": "rob", "seeds": (0, 1), "base": [],
              "runs": {"none": ["data.augment.resample=0"],
                       # the softening of a larger photo scaled down to 32 px, alone
                       "r30": ["data.augment.resample=0.3"],
                       # + JPEG at quality 100: 4:2:0 chroma subsampling and rounding only
                       "r30j50q100": ["data.augment.resample=0.3", "data.augment.jpeg=0.5",
                                      "data.augment.jpeg_quality=[100,100]"],
                       # + sensor noise, 0-8 grey levels
                       "r30n50s8": ["data.augment.resample=0.3", "data.augment.noise=0.5",
                                    "data.augment.noise_std=[0,8]"],
                       # qualities only where the robustness bound applies (q >= 75), a little below it
                       "j50q70r30": ["data.augment.jpeg=0.5", "data.augment.jpeg_quality=[70,95]",
                                     "data.augment.resample=0.3"],
                       # the cifar10_quick_robust recipe: the robust setting with twice the epochs (val11b)
                       "j50q30r30e20": JPEG30 + ["train.epochs=20"]}},
    # after val11, seed 0 only: is the JPEG loss the whitening's amplification of fine detail (a larger
    # whiten_eps amplifies it less)? How do JPEG settings trade clean accuracy at 10 epochs, and with more epochs?
    # Muon as airbench94_muon uses it (Jordan 2024: filter lr 0.24, Nesterov momentum 0.6, 3 Newton-Schulz
    # steps; the rest SGD with momentum 0.85; linear decay from the start), at batch 1000 on the fast94 net.
    # 10 epochs, 1-2 at 16 px and 3-6 at 24 px: 6.75 full-size epochs, ~0.27 PFLOP with the Muon matmuls.
    "muon94": {"kind": "val", "seeds": (0,), "recipe": FAST94_V1,
               "base": ["data.val_size=5000", "optim.name=muon", "optim.momentum=0.85", "train.batch_size=1000",
                        "train.epochs=10", "data.augment.epoch_sizes=[16,16,24,24,24,24]", "schedule.pct_start=0",
                        "train.eval_every=5"],
               "runs": {"sgd0.4": ["optim.lr=0.4"], "sgd0.8": ["optim.lr=0.8"]}},
    # at the same budget: fast94's own SGD (batch 256) on the same 10-epoch schedule, and Muon on 7 epochs all at
    # 32 px (7 full-size epochs, ~0.28 PFLOP on 50k images)
    "muon94b": {"kind": "val", "seeds": (0,), "recipe": FAST94_V1,
                "base": ["data.val_size=5000"],
                "runs": {"sgd10": ["train.epochs=10", "data.augment.epoch_sizes=[16,16,24,24,24,24]"],
                         "muon7full": ["optim.name=muon", "optim.momentum=0.85", "train.batch_size=1000",
                                       "train.epochs=7", "data.augment.epoch_sizes=[]", "schedule.pct_start=0",
                                       "optim.lr=0.4"]}},
    # the default recipe against the same with Muon at batch 500 (SGD lr scaled with the batch), seed 0
    "muonq": {"kind": "val", "seeds": (0,), "base": ["data.val_size=5000"],
              "runs": {"base": [], "muon": MUON_Q}},
    # after muonq (Muon +1.0 point of validation top-1 at the same time): Muon's own settings, weaker
    # translation (airbench translates by 2 px), the batch, seed 0, on the same validation split
    "q92": {"kind": "val", "seeds": (0,), "base": ["data.val_size=5000"] + MUON_Q,
            "runs": {"mlr0.36": ["optim.muon_lr=0.36"], "mlr0.16": ["optim.muon_lr=0.16"],
                     "pad2": ["data.augment.crop_padding=2"], "bs250": ["train.batch_size=250", "optim.lr=0.2"]}},
    # after q92 (2-px translation +0.4, muon_lr 0.16-0.24 flat, batch 250 worse): the batch, more epochs at low
    # resolution in the same time, the SGD groups' lr (BN biases, head), label smoothing 0.2
    "q92b": {"kind": "val", "seeds": (0,), "base": ["data.val_size=5000", "data.augment.crop_padding=2"] + MUON_Q,
             "runs": {"bs1000": ["train.batch_size=1000", "optim.lr=0.8"],
                      "lowres12": ["train.epochs=12", "data.augment.epoch_sizes=[16,16,16,16,16,16,24,24,24]"],
                      "slr0.8": ["optim.lr=0.8"], "ls0.2": ["train.label_smoothing=0.2"]}},
    # cifar10_quick_robust (the SGD default + JPEG, 20 epochs) against the same on the Muon default's settings,
    # seed 0; robustness.py on the 5k held out
    "robm": {"kind": "rob", "seeds": (0,), "base": ["data.val_size=5000", "train.epochs=20"] + JPEG30,
             "split": "val",
             "runs": {"sgd": [], "muon": MUON_Q + ["data.augment.crop_padding=2"]}},
    # the fast94 net with the default's Muon settings (batch 500) at <= 0.29 PFLOP on all 50k images: 10 epochs,
    # 1-2 at 16 px and 3-6 at 24 px (6.75 full-size epochs), seed 0, on the same validation split
    "f29": {"kind": "val", "seeds": (0,), "recipe": FAST94_V1,
            "base": ["data.val_size=5000", "train.epochs=10", "data.augment.epoch_sizes=[16,16,24,24,24,24]",
                     "train.eval_every=5"] + MUON_Q,
            "runs": {"m10": [], "m10pad2": ["data.augment.crop_padding=2"],
                     # no progressive resizing: 7 epochs at 32 px (~0.28 PFLOP on 50k images)
                     "m7full": ["data.augment.crop_padding=2", "train.epochs=7", "data.augment.epoch_sizes=[]"]}},
    # airbench94_muon's activation and BatchNorm (Jordan 2024) on the Muon default, 2 seeds, same split: GELU;
    # BN scales frozen at 1 with statistics momentum 0.4 (torch's convention) and eps 1e-12; both
    "air": {"kind": "val", "seeds": (0, 1), "recipe": QUICK_V3, "base": ["data.val_size=5000"],
            "runs": {"base": [], "gelu": [GELU], "bnfrozen": AIR_BN, "gelu_bnfrozen": [GELU] + AIR_BN}},
    # after air (GELU +0.2 at 16 % more time, frozen BN scales a tie): airbench94_muon's BN biases train at a far
    # larger lr than its head (0.053 on a summed loss at batch 2000 is ~100 on our mean loss), with weight decay;
    # here bias_lr 4 and 16 (the SGD groups' lr is 0.4) with frozen BN scales, and 16 with decay on the biases
    "air2": {"kind": "val", "seeds": (0, 1), "recipe": QUICK_V3, "base": ["data.val_size=5000"] + AIR_BN,
             "runs": {"blr4": ["optim.bias_lr=4"], "blr16": ["optim.bias_lr=16"],
                      "blr16wd": ["optim.bias_lr=16", "optim.no_decay_bn_bias=false"]}},
    # after air (GELU with frozen BN scales +0.4 on the default net, 2 seeds): the same on f29's two schedules
    "f29air": {"kind": "val", "seeds": (0,), "recipe": FAST94_V1,
               "base": F29AIR,
               "runs": {"m10": M10,
                        "m7full": ["train.epochs=7", "data.augment.epoch_sizes=[]"]}},
    # after f29air (GELU + frozen BN scales +0.6 on m10, seeds 0 and 1 both 93.24 %): airbench's whitening
    # regulariser (5e-4 against our 1e-2) and a larger batch (1000, SGD groups' lr doubled), seed 0
    "f29air2": {"kind": "val", "seeds": (0,), "recipe": FAST94_V1,
                "base": F29AIR + M10,
                "runs": {"we5e-4": ["model.kwargs.whiten_eps=5e-4"],
                         "bs1000": BS1000}},
    # after f29air2: airbench94_muon's stem (2x2 whitening, each filter and its negative, a trained bias, GELU
    # straight after; no 1x1 conv at full resolution). Its 31-px output makes the whole net 23 % cheaper (103 M MACs
    # per 32-px image against 134 M), so at the same compute the schedule has 12 epochs (8.75 full-size ones)
    "f29ab": {"kind": "val", "seeds": (0, 1), "recipe": FAST94_V1,
              "base": F29AIR + ["model.kwargs.widths=[24,64,256,256]", "model.kwargs.whiten_style=airbench"],
              "runs": {"e12": ["train.epochs=12", "data.augment.epoch_sizes=[16,16,24,24,24,24]"], "e10": M10}},
    # after f29ab (the stem: no gain): airbench94's Lookahead (Jordan 2024: every 5 steps, pull rising with
    # progress) on f29air/m10, seed 0
    "f29la": {"kind": "val", "seeds": (0,), "recipe": FAST94_V1,
              "base": F29AIR + M10,
              "runs": {"la5": ["train.lookahead_every=5"]}},
    # after f29air2's bs1000 (ahead on both seeds): airbench's batch 2000 (SGD groups' lr 1.6), and batch 1000 with
    # a third 16-px epoch (0.283 PFLOP on 50k images), seed 0
    "f29b": {"kind": "val", "seeds": (0,), "recipe": FAST94_V1,
             "base": F29AIR + M10,
             "runs": {"bs2000": ["train.batch_size=2000", "optim.lr=1.6"],
                      "bs1000e11": BS1000 + ["train.epochs=11", "data.augment.epoch_sizes=[16,16,16,24,24,24,24]"]}},
    # on bs1000: Muon at half its lr with momentum 0.7, airbench's own setting at batch 1000 (Jordan), 2 seeds
    "f29m": {"kind": "val", "seeds": (0, 1), "recipe": FAST94_V1,
             "base": F29AIR + M10 + BS1000,
             "runs": {"mlr0.12m0.7": ["optim.muon_lr=0.12", "optim.muon_momentum=0.7"]}},
    # part 2 of issue 28 (the default at 92 %): the fast94 net at half its widths (~1.4x the default's cost per
    # image) with airbench94_muon's GELU and frozen BN scales, 8 epochs (3 at 32 px) to fit the default's time,
    # at the default's batch 500 and at fast94's 1000; +-1-px test-time views, seed 0
    "q92c": {"kind": "val", "seeds": (0,), "recipe": QUICK_V3,
             "base": ["data.val_size=5000", "train.tta_shift=1", "model.kwargs.widths=[16,32,128,128]", GELU]
             + AIR_BN + ["train.epochs=8", "data.augment.epoch_sizes=[16,16,16,24,24]"],
             "runs": {"half94": [], "half94bs1000": BS1000}},
    # part 2 of issue 28: air's GELU with frozen BN scales (+0.4 on validation, 16-25 % more time) with the time paid
    # back by fewer full-size epochs: 9 epochs (4 at 32 px), and 9 with a fourth at 16 px (3 at 32), 2 seeds
    "q92d": {"kind": "val", "seeds": (0, 1), "recipe": QUICK_V3, "base": ["data.val_size=5000", GELU] + AIR_BN,
             "runs": {"e9": ["train.epochs=9"],
                      "e9lr": ["train.epochs=9", "data.augment.epoch_sizes=[16,16,16,16,24,24]"]}},
    # part 3 of issue 28: does the default's Muon (with its batch 500, linear decay and 2-px translations) pay on
    # cifar10_resnet18_10ep's SGD recipe (pinned)? A 4-epoch proxy (1 at 16 px, 1 at 24, 2 at 32; ~20 min a run on
    # a 2-core Zen 4), seed 0
    "r18": {"kind": "val", "seeds": (0,), "recipe": R18_V1, "base": R18_PROXY,
            "runs": {"sgd4": [], "muon4": MUON_Q + ["data.augment.crop_padding=2"]}},
    # part 3 of issue 28, after r18: airbench94_muon's GELU and frozen BN scales on cifar10_resnet18_10ep with Muon
    # (pinned), the same 4-epoch proxy; r18/muon4 (89.30 % val) is its baseline, seed 0
    "r18air": {"kind": "val", "seeds": (0,), "recipe": R18_V2, "base": R18_PROXY,
               "runs": {"gelu_bnfrozen4": [GELU] + AIR_BN}},
    "val11b": {"kind": "rob", "seeds": (0,), "base": ["data.val_size=5000"], "split": "val",
               "runs": {"r30": [], "r30we0.1": ["model.kwargs.whiten_eps=0.1"],
                        "r30we1": ["model.kwargs.whiten_eps=1.0"],
                        "j50q70r30": ["data.augment.jpeg=0.5", "data.augment.jpeg_quality=[70,95]"],
                        "j50q30r30": JPEG30, "j50q30r30e15": JPEG30 + ["train.epochs=15"],
                        "j50q30r30e20": JPEG30 + ["train.epochs=20"],
                        "j50q30r30e30": JPEG30 + ["train.epochs=30"],
                        "j70q30r30e20": ["data.augment.jpeg=0.7", "data.augment.jpeg_quality=[30,95]",
                                         "train.epochs=20"]}},
}


def robustness(checkpoint: str, env: dict, split: str) -> dict:
    """benchmarks/robustness.py on one checkpoint, in its own process (it loads torch with its own threads)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rob.json"
        r = subprocess.run([sys.executable, str(HERE / "robustness.py"), checkpoint, "--split", split,
                            "--json", str(out)],
                           capture_output=True, text=True, env=env, cwd=HERE.parent)
        if r.returncode or not out.exists():
            return {"error": r.stderr.strip().splitlines()[-3:]}
        return json.loads(out.read_text())[checkpoint]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", choices=list(SWEEPS))
    ap.add_argument("--only", nargs="+", default=None, help="run only these names of the sweeps")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="instead of each sweep's own seeds")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "sweep_quick")
    args = ap.parse_args()
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONUNBUFFERED="1")
    jobs = [(sweep, name, seed, spec["base"] + ov)
            for sweep in args.sweeps for spec in [SWEEPS[sweep]] for name, ov in spec["runs"].items()
            if args.only is None or name in args.only for seed in (args.seeds or spec["seeds"])]
    results: dict[str, dict] = {}
    t0 = time.time()

    def save() -> None:
        (args.out / "sweep.json").write_text(json.dumps(results, indent=1))

    def one(job) -> None:
        sweep, name, seed, overrides = job
        key = f"{sweep}/{name}/s{seed}"
        try:
            r = run(SWEEPS[sweep].get("recipe", RECIPE), seed, runs_dir / f"{sweep}-{name}-s{seed}", overrides, env)
        except RunFailed as e:
            results[key] = {"error": str(e)}
            save()
            print(key, "failed:", e, flush=True)
            return
        last = r["epochs"][-1]
        results[key] = {"overrides": overrides, "test_top1": r["test_top1"], "train_s": r["train_s"],
                        "train_pflop": r["train_pflop"],
                        "last_top1": last["top1"], "split": last["split"], "done_s": time.time() - t0}
        if SWEEPS[sweep]["kind"] == "rob":
            results[key]["robustness"] = robustness(r["checkpoint"], env, SWEEPS[sweep].get("split", "test"))
        save()
        print(key, json.dumps(results[key]), flush=True)

    with ThreadPoolExecutor(max_workers=args.workers) as ex:
        list(ex.map(one, jobs))
    print(f"all done in {time.time() - t0:.0f} s\n")

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    print("| runs | seeds | training min | last-epoch val top-1 | test top-1, TTA | clean (no TTA) | JPEG q95 | "
          "JPEG q75 | upscaled x4 + q75 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for group in dict.fromkeys(k.rsplit("/", 1)[0] for k in results):
        rs = [v for k, v in results.items() if k.rsplit("/", 1)[0] == group and "error" not in v]
        if not rs:
            continue
        val = f"{100 * mean([r['last_top1'] for r in rs]):.2f} %" if rs[0]["split"] == "val" else "-"
        cells = [f"{mean([r['train_s'] for r in rs]) / 60:.2f}", val, f"{100 * mean([r['test_top1'] for r in rs]):.2f} %"]
        rob = [r["robustness"] for r in rs if "clean (PNG)" in r.get("robustness", {})]
        if rob:
            clean = mean([t["clean (PNG)"] for t in rob])
            cells.append(f"{100 * clean:.2f} %")
            for v in ("JPEG q95", "JPEG q75", "upscaled x4 + JPEG q75"):
                m = mean([t[v] for t in rob])
                cells.append(f"{100 * m:.2f} % ({100 * (m - clean):+.2f})")
        else:
            cells += ["-"] * 4
        print(f"| {group} | {len(rs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
