"""report.md for a run folder: loss/accuracy curves (PNG) and the tutorials' results table."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def _load_history(run: Path, prefix: str) -> list[dict]:
    path = run / f"{prefix}metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(history: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.set_title("loss")
    b.plot(ep, [h["train_acc"] for h in history], label="train")
    b.plot(ep, [h["val_top1"] for h in history], label="validation top-1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(), b.set_title("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: run folder does not exist")
    prefixes = sorted({p.name[: -len("results.json")] for p in run.glob("*results.json")})
    if not prefixes:
        raise UserError(f"{run}: no results.json (is the run finished? resume it with "
                        f"`resnetlab train --resume {run}`)")
    lines = [f"# Report: {run.name}", "",
             "| run | model | top-1 | top-5 | params (M) | MACs (G) | training time (min) | img/s | device |",
             "|---|---|---|---|---|---|---|---|---|"]
    figures = []
    for prefix in prefixes:
        res = json.loads((run / f"{prefix}results.json").read_text())
        label = prefix.rstrip("-") or run.name
        lines.append(f"| {label} | {res['model']} | {res['test']['top1'] * 100:.2f} % | "
                     f"{res['test']['top5'] * 100:.2f} % | {res['params'] / 1e6:.3f} | {res['macs'] / 1e9:.3f} | "
                     f"{res['train_time_min']:.1f} | {res['img_per_s']:.0f} | {res['device']} |")
        if (run / f"{prefix}metrics.jsonl").is_file():
            png = run / f"{prefix}curves.png"
            plot_curves(_load_history(run, prefix), png, label)
            figures.append(png.name)
        if (run / f"{prefix}confusion.png").is_file():
            figures.append(f"{prefix}confusion.png")
    lines += ["", "Top-1/top-5 on the test split with the weights named in results.json; time and img/s "
              "measured during training (img/s averaged over epochs after the first).", ""]
    lines += [f"![{f}]({f})" for f in figures]
    out = run / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
