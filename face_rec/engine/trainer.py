"""The trainer: a data stream and one training step; hooks do the rest."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from face_rec import distributed as D
from face_rec.data.augment import Augment
from face_rec.engine.ema import WeightEMA
from face_rec.models.partial_fc import PartialFC
from face_rec.models.preprocess import FACE_REC

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0  #: optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  #: micro-batches of ``epoch`` already consumed


class Hook:
    """Called by :class:`Trainer` around training; override what you need."""

    def before_train(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...


class Trainer:
    """Trains ``model`` (+ ``head``) with ``loss_fn`` over batch plans of ``dataset``.

    The model returns raw (unnormalised) embeddings (B, D); the head maps them to scores (B, C)
    (without a head the loss gets the embeddings), and every loss is called as
    ``loss_fn(scores, labels, norms)`` with the raw embeddings' norms (B,), which the
    quality-adaptive margins use (AdaFace, MagFace) and the others ignore. A loss's buffers
    (AdaFace's norm statistics, CurricularFace's t) are part of :meth:`state_dict`.

    ``ema_decay`` > 0 keeps a moving average of the backbone's weights (:class:`WeightEMA`):
    :attr:`eval_model` is then the average, which validation embeds and checkpoints hold as
    ``model`` (the trained weights as ``train_model``).

    ``frozen``: modules left untrained (fine-tuning): kept in eval mode. One step =
    ``accum_steps`` micro-batches then one optimizer update. After each step
    ``self.metrics`` holds loss, accuracy, grad norm, LR, images/s and the data-wait fraction.

    Under torchrun (a process group of W ranks) the plan's batches are global: rank r trains on
    the r-th contiguous 1/W of each, ``model`` and a replicated ``head`` run under
    DistributedDataParallel, a :class:`PartialFC` loss keeps its centres sharded, and the
    metrics are reduced over ranks. Every rank must call :meth:`state_dict` (it gathers).
    """

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module | None,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        dataset: Dataset,
        plan,
        augment: Augment,
        max_steps: int,
        hooks: Sequence[Hook] = (),
        device: str = "cpu",
        precision: str = "fp32",
        grad_clip: float | None = None,
        accum_steps: int = 1,
        channels_last: bool = False,
        class_weight: np.ndarray | None = None,
        num_workers: int = 0,
        grad_clip_scope: str = "backbone",
        frozen: Sequence[nn.Module] = (),
        compile: bool = False,
        compile_backend: str = "inductor",
        ema_decay: float = 0.0,
    ) -> None:
        self.model, self.head, self.loss_fn = model, head, loss_fn
        self.optimizer, self.scheduler, self.dataset, self.plan = (
            optimizer,
            scheduler,
            dataset,
            plan,
        )
        self.augment, self.max_steps, self.hooks = augment, max_steps, list(hooks)
        self.device, self.precision, self.grad_clip = torch.device(device), precision, grad_clip
        self.accum_steps, self.num_workers = accum_steps, num_workers
        if grad_clip_scope not in ("backbone", "all"):
            raise ValueError(
                f"trainer.grad_clip_scope={grad_clip_scope!r}: use backbone (insightface: the "
                "class centres are not clipped) or all (backbone and head together)"
            )
        self.grad_clip_scope, self.frozen = grad_clip_scope, list(frozen)
        channels_last = channels_last and self._cpu_backward_is_safe(
            "channels_last", "channels_last", "free(): invalid next size"
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.weight = (
            None
            if class_weight is None
            else torch.as_tensor(class_weight, dtype=torch.float32, device=self.device)
        )
        self.state, self.metrics, self.stop = TrainState(), {}, False
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        for m in (model, head, loss_fn):
            if m is not None:
                m.to(self.device)
        model.to(memory_format=self.memory_format)
        self.ema = WeightEMA(model, ema_decay) if ema_decay else None
        self.rank, self.world = D.rank(), D.world_size()
        self.sharded = [m for m in (head, loss_fn) if isinstance(m, PartialFC)]
        sharded = {id(p) for m in self.sharded for p in m.parameters()}
        self.replicated_params = [p for p in self.params if id(p) not in sharded]
        self.sharded_params = [p for p in self.params if id(p) in sharded]
        self.forward_model, self.forward_head = model, head
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DDP(model, device_ids=ids)
            if head is not None and not isinstance(head, PartialFC):
                self.forward_head = DDP(head, device_ids=ids)
        if not isinstance(compile, bool):
            raise ValueError(f"trainer.compile={compile!r}: use true or false")
        self.compiled = compile and self._cpu_backward_is_safe(
            "compile", "compiled", "double free or corruption"
        )
        if self.compiled:  # the step's forward and backward through torch.compile; self.model
            # (what validation embeds and checkpoints save) stays the eager module, same weights
            self.forward_model = torch.compile(
                self.forward_model, backend=compile_backend, dynamic=False
            )
            log.info(
                "backbone compiled (torch.compile, backend %s): the first step includes the "
                "compilation (about a minute on 2 CPU cores)",
                compile_backend,
            )

    def _cpu_backward_is_safe(self, key: str, what: str, error: str) -> bool:
        """False, with a warning, where torch 2.14.1's CPU backward of a network with 8-channel
        convolutions corrupts memory in this mode (channels_last, compiled)."""
        if self.device.type != "cpu" or not _has_8_channel_conv(self.model):
            return True
        log.warning(
            "trainer.%s is off for this model: on CPU, torch's %s backward of a network with "
            "8-channel convolutions corrupts memory (seen with torch 2.14.1, iresnet18 "
            "model.width=0.125: '%s')",
            key,
            what,
            error,
        )
        return False

    # ------------------------------------------------------------------ the loop

    def train(self) -> None:
        for h in self.hooks:
            h.before_train(self)
        stream = self.micro_batches()
        while self.state.step < self.max_steps and not self.stop:
            self.run_step([next(stream) for _ in range(self.accum_steps)])
            for h in self.hooks:
                h.after_step(self)
        for h in self.hooks:
            h.after_train(self)

    def run_step(self, micro: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        """One optimizer step over ``micro`` batches of (uint8 images, labels, data wait s)."""
        start = time.perf_counter()
        self.model.train()
        for m in self.frozen:  # frozen stages keep their loaded BatchNorm statistics
            m.eval()
        losses, correct, seen, embeddings = [], 0, 0, None
        for images, labels, _ in micro:
            x = self.augment(images.to(self.device, non_blocking=True))
            x = x.contiguous(memory_format=self.memory_format)
            y = labels.to(self.device, non_blocking=True)
            with self.autocast():
                embeddings = self.forward_model(x)  # raw: not normalised
                out = self.forward_head(embeddings) if self.head is not None else embeddings
                per_sample = self.loss_fn(out, y, embeddings.float().norm(dim=1))
            w = self.weight[y] if self.weight is not None else torch.ones_like(per_sample)
            loss = (per_sample * w).mean() / self.accum_steps
            self.scaler.scale(loss).backward()
            losses.append(loss.item() * self.accum_steps)
            if self.head is not None:
                correct += int((out.argmax(1) == y).sum())
            elif self.sharded:
                correct += round(self.sharded[0].accuracy * len(y))
            seen += len(y)
        self.scaler.unscale_(self.optimizer)
        grad_norm = self.clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.state.step += 1
        elapsed = time.perf_counter() - start
        wait = sum(m[2] for m in micro)
        if self.world > 1:  # the step's figures over all ranks
            figures = [float(np.sum(losses)), correct, seen, wait]
            t = D.all_reduce(torch.tensor(figures, device=self.device))  # NCCL: device tensors
            losses = [t[0].item() / self.world / len(micro)]
            correct, seen, wait = t[1].item(), t[2].item(), t[3].item() / self.world
        has_accuracy = self.head is not None or bool(self.sharded)
        self.metrics = {
            "loss": float(np.mean(losses)),
            "accuracy": correct / seen if has_accuracy else None,
            "grad_norm": float(grad_norm),
            "lr": self.optimizer.param_groups[0]["lr"],  # the backbone's
            "lr_head": self.optimizer.param_groups[-1]["lr"],  # the class centres' (the same
            # group when the head has no parameters)
            "images_per_s": seen / (elapsed + wait),
            "data_wait_fraction": wait / (elapsed + wait),
            "embedding_norms": embeddings.detach().float().norm(dim=1).cpu(),
        }

    @property
    def eval_model(self) -> nn.Module:
        """The backbone to validate and deploy: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def clip_gradients(self) -> torch.Tensor | float:
        """Clip to ``grad_clip`` and return the norm clipped by: the backbone's gradients alone
        (``grad_clip_scope="backbone"``, insightface's rule: with many identities the class
        centres' gradient would dominate the norm), or backbone and head together (``all``;
        sharded centres summed over ranks)."""
        max_norm = self.grad_clip or float("inf")
        if self.grad_clip_scope == "backbone":
            return nn.utils.clip_grad_norm_(list(self.model.parameters()), max_norm)
        if self.sharded:
            return D.clip_grad_norm(self.replicated_params, self.sharded_params, self.grad_clip)
        return nn.utils.clip_grad_norm_(self.params, max_norm)

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """Endless (images, labels, seconds waited) following the batch plan from the saved
        position; a resumed run continues mid-epoch exactly where it stopped."""
        while True:
            todo = self.plan.batches(self.state.epoch)[self.state.batch_in_epoch :]
            if self.world > 1:  # this rank's contiguous share of each global batch
                todo = [b[len(b) // self.world * self.rank :][: len(b) // self.world] for b in todo]
            # the loader's own generator: creating it must not draw from the global RNG, or a
            # resumed run (which creates one more loader) would see other dropout masks
            loader = DataLoader(
                self.dataset,
                batch_sampler=[list(b) for b in todo],
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.state.epoch),
            )
            it = iter(loader)
            while True:
                t0 = time.perf_counter()
                try:
                    images, labels = next(it)
                except StopIteration:
                    break
                self.state.batch_in_epoch += 1
                yield images, labels, time.perf_counter() - t0
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything an exact resume needs. Sharded class centres and their optimizer state
        are gathered whole, and each rank's random streams are kept, so every rank calls this."""
        optimizer = self.optimizer.state_dict()
        for m in self.sharded:
            optimizer = m.gather_optimizer_state(self.optimizer, optimizer)
        streams = {
            "augment": self.augment.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),  # noqa: NPY002 (global state)
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        weights = {"model": self.model.state_dict()}
        if self.ema is not None:  # ``model``: what evaluation, export and init_from load
            weights = {"model": self.ema.module.state_dict(), "train_model": weights["model"]}
            weights |= {"ema_updates": self.ema.updates, "ema_decay": self.ema.decay}
        return {
            **weights,
            "preprocessing": getattr(self.model, "preprocessing", FACE_REC).as_dict(),
            "head": self.head.state_dict() if self.head is not None else None,
            "loss": self.loss_fn.state_dict(),
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "trainer": asdict(self.state),
            "world_size": self.world,
            **streams,
            "rank_streams": D.all_gather_objects(streams) if self.world > 1 else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state``, also on another number of ranks: sharded centres are re-sharded,
        the data position is converted; random streams are exact only on the same number."""
        self.model.load_state_dict(state.get("train_model", state["model"]))
        self._load_average(state)
        if self.head is not None:
            self.head.load_state_dict(state["head"])
        self.loss_fn.load_state_dict(state["loss"])
        optimizer = state["optimizer"]
        for m in self.sharded:
            optimizer = m.shard_optimizer_state(self.optimizer, optimizer)
        configured = _hyperparameters(self.optimizer), list(self.scheduler.base_lrs)
        try:
            self.optimizer.load_state_dict(optimizer)
        except ValueError as e:
            saved = [len(g["params"]) for g in optimizer["param_groups"]]
            now = [len(g["params"]) for g in self.optimizer.param_groups]
            raise ValueError(
                f"cannot resume: the checkpoint's optimizer has parameter groups of {saved} "
                f"tensors, this run's {now} (saved by an older face_rec, or with other "
                "trainer.freeze_stages / model settings); resume with the settings it was saved "
                "with, or start a new run from its weights with init_from=<checkpoint>"
            ) from e
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_configured(*configured)
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**state["trainer"])
        saved_world = state.get("world_size", 1)
        streams = state.get("rank_streams") or [state]
        if saved_world != self.world:  # batches of B x W images: same images seen, new units
            self.state.batch_in_epoch = self.state.batch_in_epoch * saved_world // self.world
        streams = streams[self.rank] if len(streams) == self.world else streams[0]
        self.augment.load_state_dict(streams["augment"])
        rng = streams["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])  # noqa: NPY002
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _load_average(self, state: dict) -> None:
        """The weight average from ``state``; a checkpoint saved without one starts it afresh
        from the loaded weights, and one saved with it resumes from its trained weights."""
        if self.ema is None:
            if "train_model" in state:
                log.warning(
                    "resume: the checkpoint kept a weight average (trainer.ema_decay > 0); this "
                    "run trains on from its trained weights without one (trainer.ema_decay=0)"
                )
            return
        if "train_model" not in state:
            self.ema.restart(self.model)
            log.warning(
                "resume: the checkpoint has no weight average; trainer.ema_decay=%g starts one "
                "with the steps after step %d",
                self.ema.decay,
                state["trainer"]["step"],
            )
            return
        self.ema.module.load_state_dict(state["model"])
        self.ema.updates = int(state["ema_updates"])
        saved = state.get("ema_decay", self.ema.decay)
        if saved != self.ema.decay:
            log.warning(
                "resume: the config changes the weight average's decay (%g -> %g); the steps "
                "from %d on are averaged with the new one",
                saved,
                self.ema.decay,
                state["trainer"]["step"],
            )

    def _apply_configured(self, hyper: list[dict], base_lrs: list[float]) -> None:
        """After loading a checkpoint: the optimizer settings and base LRs of this run's config
        win over the saved ones (a resume with ``optimizer.lr=0.01`` trains at 0.01), the LR
        is recomputed from the schedule at the restored step, and each change is logged."""
        changes = []
        for i, (group, want) in enumerate(zip(self.optimizer.param_groups, hyper, strict=True)):
            for key, value in want.items():
                if group.get(key) != value:
                    changes.append(f"group {i} {key} {group.get(key)} -> {value}")
                    group[key] = value
        saved = list(self.scheduler.base_lrs)
        if saved != base_lrs:
            changes.append(f"base lr {saved} -> {base_lrs}")
        self.scheduler.base_lrs = base_lrs
        step = self.scheduler.last_epoch
        for group, base, fn in zip(
            self.optimizer.param_groups, base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["initial_lr"], group["lr"] = base, base * fn(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if changes:
            log.warning(
                "resume: the config changes the checkpoint's optimizer settings (%s); the "
                "config's values apply from step %d",
                "; ".join(changes),
                self.state.step,
            )


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each param group's settings but its parameters and the LR the scheduler sets."""
    skip = ("params", "lr", "initial_lr")
    return [{k: v for k, v in g.items() if k not in skip} for g in optimizer.param_groups]


def _has_8_channel_conv(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.Conv2d) and 8 in (m.in_channels, m.out_channels) for m in model.modules()
    )
