"""Figures and tables of a run: confusion matrix (CSV + PNG), loss/accuracy curves, report.md."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write_text
from .metrics import EvalResult


HEATMAP_CLASSES = 40  # above this many classes the confusion image is not drawn


def most_confused(confusion: list[list[int]], classes: list[str], k: int = 10) -> list[tuple[str, str, int, float]]:
    """The k largest off-diagonal cells: (true class, predicted class, images, share of the true class)."""
    cells = [(n, i, j) for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j and n > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(classes[i], classes[j], n, n / max(1, sum(confusion[i]))) for n, i, j in cells[:k]]


def _read_confusion(path: Path) -> tuple[list[str], list[list[int]]]:
    lines = path.read_text().splitlines()
    classes = lines[0].split(",")[1:]
    return classes, [[int(v) for v in line.split(",")[1:]] for line in lines[1:] if line]


def write_confusion(result: EvalResult, classes: list[str], base: Path) -> None:
    """confusion.csv (rows true, columns predicted) and a PNG heatmap with class names."""
    cm = result.confusion
    rows = ["true\\pred," + ",".join(classes)]
    rows += [name + "," + ",".join(map(str, row)) for name, row in zip(classes, cm.tolist())]
    atomic_write_text(base.with_suffix(".csv"), "\n".join(rows) + "\n")
    if len(classes) > HEATMAP_CLASSES:
        return  # a 100x100 heatmap with names is unreadable: the report lists the most confused pairs instead
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
    """Loss, accuracy and the learning rate per epoch (markers: a run of one epoch, or one evaluation, shows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    # Without a validation split the per-epoch evaluation ran on the test split: say so on the plot.
    split = "test (monitoring only)" if history and history[-1].get("eval_split") == "test" else "validation"
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    a.plot(ep, [h["train_loss"] for h in history], marker="o", ms=3, label="train")
    ev = [h for h in history if h.get("val_top1") is not None]  # epochs evaluated (train.eval_every)
    a.plot([h["epoch"] for h in ev], [h["val_loss"] for h in ev], marker="o", ms=3, label=split)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.set_title("loss")
    b.plot(ep, [h["train_acc"] for h in history], marker="o", ms=3, label="train")
    b.plot([h["epoch"] for h in ev], [h["val_top1"] for h in ev], marker="o", ms=3, label=f"{split} top-1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(), b.set_title("accuracy")
    lr = [(h["epoch"], h["lr"]) for h in history if h.get("lr") is not None]
    c.plot([e for e, _ in lr], [v for _, v in lr], marker="o", ms=3, color="C2")
    c.set_xlabel("epoch"), c.set_ylabel("learning rate"), c.set_title("learning rate (at each epoch's end)")
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
    figures: list[str] = []
    pairs: list[str] = []
    pair_notes: list[str] = []
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
        elif (run / f"{prefix}confusion.csv").is_file():
            classes, cm = _read_confusion(run / f"{prefix}confusion.csv")
            if len(classes) > HEATMAP_CLASSES:
                pairs += [f"| {label} | {t} | {p} | {n} | {share * 100:.0f} % |"
                          for t, p, n, share in most_confused(cm, classes)]
                pair_notes.append(f"{label}: {len(classes)} classes, too many for a readable confusion image; "
                                  f"the whole matrix is in {prefix}confusion.csv")
    lines += ["", "Top-1/top-5 on the test split with the weights named in results.json; time and img/s "
              "measured during training (img/s averaged over epochs after the first).", ""]
    if pairs:
        lines += ["## Most confused pairs", "", *pair_notes, "",
                  "| run | true class | predicted as | images | share of the true class |", "|---|---|---|---|---|",
                  *pairs, ""]
    lines += [f"![{f}]({f})" for f in figures]
    out = run / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
