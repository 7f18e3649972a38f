"""Figures and tables of a run: confusion matrix (CSV + PNG), loss/accuracy curves, report.md."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write_text
from .metrics import EvalResult


def write_confusion(result: EvalResult, classes: list[str], base: Path) -> None:
    """confusion.csv (rows true, columns predicted) and a PNG heatmap with class names."""
    cm = result.confusion
    rows = ["true\\pred," + ",".join(classes)]
    rows += [name + "," + ",".join(map(str, row)) for name, row in zip(classes, cm.tolist())]
    atomic_write_text(base.with_suffix(".csv"), "\n".join(rows) + "\n")
    if len(classes) > 40:
        return  # a 100x100 heatmap with names is unreadable; the CSV has it all
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.5 * len(classes)))
    norm = (cm.float() / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (top-1 {result.top1:.4f})")
    fig.tight_layout()
    fig.savefig(base.with_suffix(".png"), dpi=100)
    plt.close(fig)


def _load_history(run: Path, prefix: str) -> list[dict]:
    path = run / f"{prefix}metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(history: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    # Without a validation split the per-epoch evaluation ran on the test split: say so on the plot.
    split = "test (monitoring only)" if history and history[-1].get("eval_split") == "test" else "validation"
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    ev = [h for h in history if h.get("val_top1") is not None]  # epochs evaluated (train.eval_every)
    a.plot([h["epoch"] for h in ev], [h["val_loss"] for h in ev], label=split)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.set_title("loss")
    b.plot(ep, [h["train_acc"] for h in history], label="train")
    b.plot([h["epoch"] for h in ev], [h["val_top1"] for h in ev], label=f"{split} top-1")
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
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
