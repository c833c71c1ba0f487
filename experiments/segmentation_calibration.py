"""Calibration regularizers for segmentation on a generated blob task: cross-entropy, label
smoothing (0.1), SVLS (sigma 1; Islam & Glocker 2021) and NACL (lambda 0.1, 3x3 mean window, L1 on
the logits; Murugesan et al. 2023), the same small conv net, 4 seeds, 1000 steps on 40 images. Held-out Dice (foreground
classes) and pixel / classwise ECE. Claims graded (experiments/_verdict.py): SVLS calibrates better
than CE (pixel ECE); NACL calibrates better than CE and than SVLS (NACL's paper); neither costs Dice
(NACL's and SVLS's papers report Dice on par with CE).

The task: 32x32 images, background plus 3 classes of random ellipses (later ones overwrite
earlier ones); the image is each class's intensity plus a 3x3 blur and Gaussian noise, so
boundaries are ambiguous: the setting where spatially varying targets matter.

    .venv/bin/python experiments/segmentation_calibration.py      # about 5 minutes; outputs/experiments/segmentation_calibration.png
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from _verdict import experiment_parser, grade, mean_std, print_rows, pyplot, save_figure, seed_se

from divreg.metrics import classwise_ece, pixel_ece
from divreg.regularizers import nacl_loss, svls_loss

METHODS = ("CE", "LS 0.1", "SVLS", "NACL")
CLASSES, SIZE = 4, 32


def blobs(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (count, 1, 32, 32), labels (count, 32, 32))."""
    rows, cols = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    labels = torch.zeros(count, SIZE, SIZE, dtype=torch.long)
    for image in range(count):
        for _ in range(4):
            centre = torch.rand(2, generator=generator) * SIZE
            radii = 3 + torch.rand(2, generator=generator) * 6
            inside = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
            labels[image][inside] = int(torch.randint(1, CLASSES, (1,), generator=generator))
    intensity = torch.tensor([0.0, 1.0, 2.0, 3.0])[labels][:, None]  # (count, 1, 32, 32)
    blurred = F.avg_pool2d(F.pad(intensity, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return blurred + 0.9 * torch.randn(blurred.shape, generator=generator), labels


def network() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, CLASSES, 1))


def loss_of(method: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if method == "CE":
        return F.cross_entropy(logits, labels)
    if method == "LS 0.1":
        return F.cross_entropy(logits, labels, label_smoothing=0.1)
    if method == "SVLS":
        return svls_loss(logits, labels, sigma=1.0).mean()
    return nacl_loss(logits, labels, weight=0.1)


def dice(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over foreground classes of 2|P & L| / (|P| + |L|), over the whole test set."""
    scores = []
    for c in range(1, CLASSES):
        p, t = predicted == c, labels == c
        scores.append(2 * float((p & t).sum()) / max(1, float(p.sum() + t.sum())))
    return float(np.mean(scores))


def run(method: str, seed: int, steps: int, data) -> dict:
    (train_x, train_y), (test_x, test_y) = data
    torch.manual_seed(seed)
    model = network()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(train_x), (16,), generator=generator)
        loss = loss_of(method, model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        probs = torch.softmax(model(test_x), dim=1)
    return {"dice": dice(probs.argmax(1), test_y), "pixel_ece": pixel_ece(probs, test_y),
            "classwise_ece": classwise_ece(probs, test_y)}


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--train", type=int, default=40)  # few images: CE overfits and grows overconfident
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    results = {method: [] for method in METHODS}
    for seed in range(args.seeds):
        generator = torch.Generator().manual_seed(1000 + seed)
        data = (blobs(args.train, generator), blobs(50, generator))  # each seed its own data and initialization
        for method in METHODS:
            results[method].append(run(method, seed, args.steps, data))
    summary = {method: {key: mean_std([r[key] for r in runs])
                        for key in runs[0]} for method, runs in results.items()}
    print(f"{args.seeds} seeds, {args.steps} steps, {time.perf_counter() - started:.0f} s\n")
    print("| method | Dice | pixel ECE | classwise ECE |\n|---|---|---|---|")
    for method, values in summary.items():
        print(f"| {method} | " + " | ".join(f"{m:.4f} +- {s:.4f}" for m, s in values.values()) + " |")

    def verdict(better, worse, key, higher):
        (b, sb), (w, sw) = summary[better][key], summary[worse][key]
        return grade(b, w, seed_se(sb, args.seeds), seed_se(sw, args.seeds), higher_is_better=higher)

    rows = [{"claim": "SVLS: lower pixel ECE than CE", "our figure": f"{summary['SVLS']['pixel_ece'][0]:.4f} vs "
             f"{summary['CE']['pixel_ece'][0]:.4f}", "verdict": verdict("SVLS", "CE", "pixel_ece", False)},
            {"claim": "NACL: lower pixel ECE than CE", "our figure": f"{summary['NACL']['pixel_ece'][0]:.4f} vs "
             f"{summary['CE']['pixel_ece'][0]:.4f}", "verdict": verdict("NACL", "CE", "pixel_ece", False)},
            {"claim": "NACL: lower pixel ECE than SVLS", "our figure": f"{summary['NACL']['pixel_ece'][0]:.4f} vs "
             f"{summary['SVLS']['pixel_ece'][0]:.4f}", "verdict": verdict("NACL", "SVLS", "pixel_ece", False)},
            {"claim": "NACL: lower classwise ECE than CE", "our figure": f"{summary['NACL']['classwise_ece'][0]:.4f} vs "
             f"{summary['CE']['classwise_ece'][0]:.4f}", "verdict": verdict("NACL", "CE", "classwise_ece", False)},
            {"claim": "SVLS: Dice not below CE's (a drop = did not hold)",
             "our figure": f"{summary['SVLS']['dice'][0]:.4f} vs {summary['CE']['dice'][0]:.4f}",
             "verdict": "held" if verdict("CE", "SVLS", "dice", True) != "held" else "did not hold"},
            {"claim": "NACL: Dice not below CE's (a drop = did not hold)",
             "our figure": f"{summary['NACL']['dice'][0]:.4f} vs {summary['CE']['dice'][0]:.4f}",
             "verdict": "held" if verdict("CE", "NACL", "dice", True) != "held" else "did not hold"}]
    print()
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, key, label in ((axes[0], "dice", "Dice (foreground)"), (axes[1], "pixel_ece", "pixel ECE")):
        means = [summary[m][key][0] for m in METHODS]
        errors = [seed_se(summary[m][key][1], args.seeds) for m in METHODS]
        axis.bar(METHODS, means, yerr=errors, capsize=4, color=["gray", "tab:blue", "tab:orange", "tab:green"])
        axis.set_ylabel(label)
    save_figure(figure, args.output_dir, "segmentation_calibration.png")


if __name__ == "__main__":
    main()
