"""int8 against float under ONNX Runtime on this CPU: img/s at batch 1 and 64, and accuracy where known.

For each model: the float ONNX export and the int8 one (`resnetlab export --int8`: static QDQ, per-channel
weights, calibrated on training images), timed in one process, alternated (median of --rounds). Models:
- --checkpoint CKPT (e.g. a trained cifar10_quick run): its own size; accuracies on its test split as the
  export's self-check prints them, for the export as it is and quantized plainly (`plain=True`: no
  `fold_for_quantization`, the first conv int8 too), both calibrated on the same images, and each one's
  agreement in ONNX Runtime sessions without `session.x64quantprecision`;
- resnet18 and resnet50 at 224 px with random weights and random calibration images (speed only: no
  trained ImageNet weights offline), written as throwaway checkpoints under --work.
Says whether the CPU has VNNI (avx512_vnni / avx_vnni: the int8 dot-product instructions ORT uses).

    python benchmarks/quantize.py --checkpoint runs/cifar10_quick/best.safetensors [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def rate(model_path: str | bytes, size: int, batch: int, seconds: float) -> float:
    import onnxruntime as ort
    from resnetlab.inference.export import session_options
    s = ort.InferenceSession(model_path, session_options(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    s.run(None, {"input": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s.run(None, {"input": x})
        n += batch
    return n / (time.perf_counter() - t0)


def agreement_without_precision_option(fp: Path, q: Path, test, meta: dict) -> float:
    """Top-1 agreement of int8 and float on the test split in sessions without resnetlab's session options
    (on x86 without VNNI: ONNX Runtime's saturating uint8 x int8 kernels)."""
    import onnxruntime as ort
    from resnetlab.inference.export import _run_onnx, check_images_input, deploy_metadata
    x = check_images_input(test.take(slice(None)), deploy_metadata(meta))
    fp32, int8 = (_run_onnx(str(p), x, ort.SessionOptions()).argmax(1) for p in (fp, q))
    return float((fp32 == int8).mean())


def random_checkpoint(work: Path, arch: str, size: int) -> Path:
    from resnetlab.models import build_model
    from resnetlab.training.runner import model_meta
    from resnetlab.weights import save_checkpoint
    path = work / f"{arch}-{size}.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        m = build_model(arch, 1000, {})
        meta = model_meta(arch, {}, [f"c{i}" for i in range(1000)], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                          size, None)
        save_checkpoint(path, m.state_dict(), meta.to_dict())
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a trained checkpoint whose data is available (accuracies)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "resnetlab-quantize")
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per (model, batch, round)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    from resnetlab.inference.export import export, export_int8
    rows = []
    jobs = []
    if a.checkpoint:
        from resnetlab.cli.common import recorded_test_split
        from resnetlab.models import read_meta
        ck = Path(a.checkpoint)
        meta = read_meta(ck)
        _, splits = recorded_test_split(meta, ck, None, "cpu")
        pick = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:a.calibration]
        fp, q = a.work / "ckpt.onnx", a.work / "ckpt.int8.onnx"
        export(ck, "onnx", splits.test.take(slice(0, 256)), fp)
        calib, test_pixels = splits.train.take(pick), splits.test.take(slice(None))
        _, c = export_int8(ck, calib, test_pixels, splits.test.labels, q, require_check=False)
        q0 = a.work / "ckpt.int8-plain.onnx"
        _, c0 = export_int8(ck, calib, test_pixels, splits.test.labels, q0, require_check=False, plain=True)
        for name, path, check in ((meta.arch, q, c), (f"{meta.arch} plain (no folds, int8 first conv)", q0, c0)):
            jobs.append((name, meta.input_size, str(fp), str(path),
                         f"whole test split: float top-1 {check.fp32_top1:.2%}, int8 {check.int8_top1:.2%}, "
                         f"agreement {check.agreement:.2%} ({'passes' if check.passed else 'fails'} the export's "
                         f"self-check); without session.x64quantprecision: agreement "
                         f"{agreement_without_precision_option(fp, path, splits.test, meta):.2%}"))
    for arch in a.archs.split(",") if a.archs else []:
        ck = random_checkpoint(a.work, arch, 224)
        g = torch.Generator().manual_seed(1)
        calib = torch.randint(0, 256, (a.calibration, 3, 224, 224), dtype=torch.uint8, generator=g)
        check = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8, generator=g)
        fp = a.work / f"{arch}.onnx"
        q = a.work / f"{arch}.int8.onnx"
        if not fp.is_file():
            export(ck, "onnx", check, fp)
        note = "random weights: speed only"
        if not q.is_file():
            _, c = export_int8(ck, calib, check, None, q, require_check=False)
            note += f" (int8/float top-1 agreement on random images {c.agreement:.0%})"
        jobs.append((arch, 224, str(fp), str(q), note))
    for name, size, fp, q, note in jobs:
        for batch in (1, 64):
            r32, r8 = [], []
            for _ in range(a.rounds):
                r32.append(rate(fp, size, batch, a.seconds))
                r8.append(rate(q, size, batch, a.seconds))
            row = {"model": name, "size": size, "batch": batch, "fp32_img_s": statistics.median(r32),
                   "int8_img_s": statistics.median(r8), "speedup": statistics.median(r8) / statistics.median(r32),
                   "note": note}
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "rows": rows}
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
