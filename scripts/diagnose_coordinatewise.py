"""Why trimmed mean / median lag FedSGD on the bias split: their bias away from the plain mean.

Runs 30 FedSGD rounds on real MNIST (``mnist`` preset) for the ``bias`` and ``iid`` partitions,
then compares trimmed mean and median of the next round's gradients with the plain mean.

    .venv/bin/python scripts/diagnose_coordinatewise.py
"""

from __future__ import annotations

import torch

from tesseract_fl.aggregators import median, trimmed_mean
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation


def main() -> None:
    for part in ("bias", "iid"):
        sim = build_simulation(
            resolve_config("mnist", overrides=[f"partition={part}", "defense=fedsgd"])
        )
        for _ in range(30):
            sim.step()
        G, _ = sim.compute_gradients()
        mean = G.mean(0)
        for name, u in (("trimmed_mean", trimmed_mean(G, 20)), ("median", median(G))):
            cos = float(torch.nn.functional.cosine_similarity(u, mean, dim=0))
            ratio = float(u.norm() / mean.norm())
            print(f"{part:5s} {name:13s} cosine to mean {cos:.3f}  norm ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
