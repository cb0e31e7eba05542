"""Train the pinned pixel-space CNN of a dataset: FID features and the adversarial baseline.

    python jobs/train_classifier.py --dataset mnist --epochs 4
    python jobs/train_classifier.py --dataset fashion_mnist --epochs 8
    python jobs/train_classifier.py --dataset mnist --arch resnet --augment --epochs 3   # 2nd judge

A small, fast job that runs in-process (no Ray needed). It writes
``hw4/assets/<dataset>_classifier.pt`` and records its SHA-256 and test accuracy in
``hw4/assets/manifest.json``; ``hw4.assets.load_classifier`` refuses a file whose hash differs,
so FID numbers stay comparable. Retraining changes the features: commit both files together.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from hw4 import assets, data, epochs, train
from hw4.checkpoint import save_checkpoint
from hw4.models.classifier import (
    ClassifierConfig,
    ConvClassifier,
    ResNetClassifier,
    ResNetClassifierConfig,
)
from jobs import cli


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image (N, 1, 28, 28) rotated by up to 12 degrees, scaled by 0.9-1.1 and shifted by up
    to 2 pixels, one random affine map per image (bilinear, black outside)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 / 14)  # 2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def main(argv: list[str] | None = None) -> dict:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"], required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="train on this many images")
    parser.add_argument("--arch", choices=["cnn", "resnet"], default="cnn",
                        help="cnn: the FID feature extractor; resnet: the second judge of samples "
                             "(pinned as hw4/assets/mnist_resnet_classifier.pt)")
    parser.add_argument("--augment", action="store_true",
                        help="random rotation, shift and scale of every training batch")
    parser.add_argument("--out", default=None, help="default: the pinned asset path")
    args = parser.parse_args(argv)
    cli.check(args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}")
    torch.manual_seed(args.seed)
    train_set = data.load_dataset(args.dataset, "train", subset=args.subset, seed=args.seed)
    test_set = data.load_dataset(args.dataset, "test")
    loader = data.make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    test_loader = data.make_loader(test_set, 1000, shuffle=False)
    cfg = ResNetClassifierConfig() if args.arch == "resnet" else ClassifierConfig()
    model = ResNetClassifier(cfg) if args.arch == "resnet" else ConvClassifier(cfg)
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * len(loader))
    t0 = time.time()
    for epoch in range(args.epochs):

        def step(x, y):
            m = train.classifier_train_step(model, augment(x, gen) if args.augment else x, y, opt)
            sched.step()
            return m

        tr = epochs.run_epoch(loader, step, desc=f"epoch {epoch}", progress=True)
        test = train.evaluate_classifier(model, test_loader)
        print(f"epoch {epoch}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f}; "
              f"test acc {test['accuracy']:.4f}", flush=True)
    metrics = {"test_accuracy": test["accuracy"], "train_seconds": time.time() - t0,
               "epochs": args.epochs}
    name = assets.SECOND_JUDGE if args.arch == "resnet" else args.dataset
    cli.check(name != assets.SECOND_JUDGE or args.dataset == "mnist",
                 "--arch resnet is the second judge of MNIST samples: use --dataset mnist")
    out = args.out or assets.classifier_path(name)
    save_checkpoint(out, kind="resnet_classifier" if args.arch == "resnet" else "classifier",
                    config=dataclasses.asdict(cfg), model=model, epoch=args.epochs - 1,
                    metrics={**metrics, "augment": args.augment})
    if args.out is None:
        assets.pin(name, {**metrics, "augment": args.augment})
    print(f"wrote {out}: {metrics}")
    return metrics


if __name__ == "__main__":
    cli.run_cli(main)
