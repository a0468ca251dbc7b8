"""Training throughput: face_rec's trainer vs a plain reference loop, and GFLOP/s vs a matmul.

    python benchmarks/train_speed.py --models mobilefacenet iresnet18 iresnet50 resnet50

For each backbone at batch ``--batch`` and ``--input-size`` with an ArcFace head over
``--classes`` identities and SGD:
- reference: the textbook loop (fp32, contiguous NCHW, default torch settings) on a batch already
  in memory as a float tensor;
- face_rec: ``Trainer.run_step`` as configured by default (channels_last), fed from a uint8
  in-memory dataset through the DataLoader, with the default augmentation, so data wait counts.
Images/s are medians over ``--steps`` timed steps after one warm-up step, in the same process.
Achieved GFLOP/s = 3 x forward FLOPs x images/s (backward ~ 2 x forward), against a 2048^3 fp32
matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch.utils.data import Dataset

from face_rec.data.augment import Augment
from face_rec.data.samplers import RandomBatches
from face_rec.engine.schedule import make_scheduler
from face_rec.engine.trainer import Trainer
from face_rec.losses import ArcFaceLoss
from face_rec.models.heads import CosineHead
from face_rec.models.registry import create_model
from face_rec.models.summary import forward_flops


class Synthetic(Dataset):
    def __init__(self, n: int, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        self.y = torch.arange(n) % classes
        self.labels = self.y.numpy()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def reference(name: str, args) -> float:
    torch.manual_seed(0)
    model = create_model(name, input_size=args.input_size)
    head = CosineHead(512, args.classes)
    loss_fn = ArcFaceLoss()
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, 3, args.input_size, args.input_size) * 2 - 1
    y = torch.arange(args.batch) % args.classes
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss = loss_fn(head(model(x)), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times[1:])


def ours(name: str, args) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(name, input_size=args.input_size)
    head = CosineHead(512, args.classes)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    data = Synthetic(args.batch * (args.steps + 1), args.input_size, args.classes)
    trainer = Trainer(
        model,
        head,
        ArcFaceLoss(),
        opt,
        make_scheduler(opt, 100),
        data,
        RandomBatches(data.labels, args.batch),
        Augment(shift=4, brightness=0.2, contrast=0.2, saturation=0.2),
        args.steps + 1,
        channels_last=True,
        grad_clip=5.0,
    )
    stream = trainer.micro_batches()
    ips, wait = [], []
    for _ in range(args.steps + 1):
        trainer.run_step([next(stream)])
        ips.append(trainer.metrics["images_per_s"])
        wait.append(trainer.metrics["data_wait_fraction"])
    return statistics.median(ips[1:]), float(np.mean(wait[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models", nargs="+", default=["mobilefacenet", "iresnet18", "iresnet50", "resnet50"]
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--classes", type=int, default=4000)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    mm = matmul_gflops()
    for name in args.models:
        flops = forward_flops(create_model(name, input_size=args.input_size), args.input_size)
        ref = reference(name, args)
        mine, wait = ours(name, args)
        print(
            json.dumps(
                {
                    "model": name,
                    "batch": args.batch,
                    "input_size": args.input_size,
                    "threads": torch.get_num_threads(),
                    "reference_img_s": round(ref, 2),
                    "face_rec_img_s": round(mine, 2),
                    "ratio": round(mine / ref, 2),
                    "data_wait_fraction": round(wait, 4),
                    "face_rec_gflops": round(3 * flops * mine / 1e9, 1),
                    "matmul_gflops": round(mm, 1),
                    "fraction_of_matmul": round(3 * flops * mine / 1e9 / mm, 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
