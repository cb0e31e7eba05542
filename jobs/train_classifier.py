"""Train the pinned pixel-space CNN of a dataset: FID features and the adversarial baseline.

    python jobs/train_classifier.py --dataset mnist --epochs 4
    python jobs/train_classifier.py --dataset fashion_mnist --epochs 8

A small, fast job that runs in-process (no Ray needed). It writes
``hw4/assets/<dataset>_classifier.pt`` and records its SHA-256 and test accuracy in
``hw4/assets/manifest.json``; ``hw4.assets.load_classifier`` refuses a file whose hash differs,
so FID numbers stay comparable. Retraining changes the features: commit both files together.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from hw4 import assets, data, train
from hw4.checkpoint import save_checkpoint
from hw4.models.classifier import ClassifierConfig, ConvClassifier
from jobs import common


def main(argv: list[str] | None = None) -> dict:
    parser = common.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"], required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="train on this many images")
    parser.add_argument("--out", default=None, help="default: the pinned asset path")
    args = parser.parse_args(argv)
    common.check(args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}")
    torch.manual_seed(args.seed)
    train_set = data.load_dataset(args.dataset, "train", subset=args.subset, seed=args.seed)
    test_set = data.load_dataset(args.dataset, "test")
    loader = data.make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    test_loader = data.make_loader(test_set, 1000, shuffle=False)
    cfg = ClassifierConfig()
    model = ConvClassifier(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * len(loader))
    t0 = time.time()
    for epoch in range(args.epochs):

        def step(x, y):
            m = train.classifier_train_step(model, x, y, opt)
            sched.step()
            return m

        tr = train.run_epoch(loader, step, desc=f"epoch {epoch}", progress=True)
        test = train.evaluate_classifier(model, test_loader)
        print(f"epoch {epoch}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f}; "
              f"test acc {test['accuracy']:.4f}", flush=True)
    metrics = {"test_accuracy": test["accuracy"], "train_seconds": time.time() - t0,
               "epochs": args.epochs}
    out = args.out or assets.classifier_path(args.dataset)
    save_checkpoint(out, kind="classifier", config=dataclasses.asdict(cfg), model=model,
                    epoch=args.epochs - 1, metrics=metrics)
    if args.out is None:
        assets.pin(args.dataset, metrics)
    print(f"wrote {out}: {metrics}")
    return metrics


if __name__ == "__main__":
    common.run_cli(main)
