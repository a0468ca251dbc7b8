"""Build everything from the ``train.py`` config and run it; returns the final metrics."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from face_rec import distributed as D
from face_rec.align.cli import alignment_kwargs
from face_rec.align.run import pack_changes, run_alignment, unchecked_note
from face_rec.config_check import check_config
from face_rec.data.holdout import holdout_pairs
from face_rec.data.pack import read_summary
from face_rec.data.pairs import Pairs, load_pairs
from face_rec.data.recordio import RecordDataset
from face_rec.data.samplers import BalancedBatches, IdentityBatches, RandomBatches, class_weights
from face_rec.data.train_set import AlignedFolder, Source, TrainSet
from face_rec.engine import hooks as H
from face_rec.engine.ema import check_decay
from face_rec.engine.schedule import make_scheduler
from face_rec.engine.trainer import Hook, Trainer
from face_rec.eval.cli import prepare_pair_images, resolve_device
from face_rec.eval.report import write_roc, write_scores
from face_rec.eval.suite import PairSet, configured_sets, mean_accuracy
from face_rec.eval.verification import PairImages, embed_pairs, measure_pairs
from face_rec.models.backbones.resnet import freeze_stages
from face_rec.models.partial_fc import PartialFC
from face_rec.utils.allocator import keep_freed_memory_on
from face_rec.utils.checkpoint import load_checkpoint
from face_rec.utils.io import write_json
from face_rec.utils.machine import code_commit, machine_info

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries may use the global state)
    torch.manual_seed(seed)


def ensure_pack(source: DictConfig, align: DictConfig) -> None:
    """Align a training source first when its pack is missing or incomplete (resumable). A
    complete pack that is not what this alignment would make now (other settings, detector,
    code or package versions, source files whose contents changed since, or new files in the
    folder) is used as it is, with a warning naming the differences and how to rebuild it."""
    kw = alignment_kwargs(align)
    kw["settings"] = dataclasses.replace(
        kw["settings"], fallback_face_fraction=source.fallback_face_fraction
    )
    kw["make_detector"] = functools.partial(kw["make_detector"], min_face_size=source.min_face_size)
    kw["detector_settings"]["min_face_size"] = source.min_face_size
    if read_summary(source.pack_dir) is not None:
        changes = pack_changes(
            source.image_dir,
            source.pack_dir,
            kw["settings"],
            kw["detector_settings"],
            kw["chunk_size"],
            scan=True,
        )
        if changes == [unchecked_note(source.image_dir)]:  # no difference found: a note
            log.info("training on the pack %s: %s", source.pack_dir, changes[0])
        elif changes:
            log.warning(
                "training pack %s is not what aligning %s would make now (%s); training on it "
                "as it is. To rebuild it: delete the folder, or run python align.py with the "
                "same settings",
                source.pack_dir,
                source.image_dir,
                "; ".join(changes),
            )
        return
    log.info("no complete pack at %s: aligning %s first", source.pack_dir, source.image_dir)
    run_alignment(source.image_dir, source.pack_dir, limit=source.limit, **kw)


def training_data(cfg: DictConfig) -> TrainSet | AlignedFolder | RecordDataset:
    """The packs of ``train_data.sources`` (aligned first if missing, by rank 0 only), a folder
    of crops, or an insightface RecordIO file."""
    folder = cfg.train_data.get("aligned_folder")
    exclude_of = cfg.train_data.get("exclude_images_of")
    if exclude_of and (folder or cfg.train_data.get("rec")):
        raise ValueError(
            f"train_data.exclude_images_of={exclude_of}: only packs (train_data.sources) can "
            "leave images out; set it to null for an aligned folder or a RecordIO file"
        )
    if folder:
        return AlignedFolder(folder, cfg.align.settings.size)
    if cfg.train_data.get("rec"):
        return RecordDataset(cfg.train_data.rec, cfg.train_data.get("idx"))
    if D.rank() == 0:
        for source in cfg.train_data.sources.values():
            ensure_pack(source, cfg.align)
    D.barrier()
    sources = [Source(s.pack_dir, s.get("identities")) for s in cfg.train_data.sources.values()]
    exclude = frozenset(_image_paths(exclude_of)) if exclude_of else frozenset()
    data = TrainSet(
        sources,
        cfg.train_data.min_images_per_identity,
        cfg.train_data.include_fallbacks,
        cfg.train_data.get("holdout_fraction") or 0.0,
        exclude,
    )
    if exclude_of:
        if not data.n_excluded:
            raise ValueError(
                f"train_data.exclude_images_of={exclude_of}: none of its {len(exclude)} images "
                "would be trained on (paths are matched relative to each pack's image root, as "
                "its manifest.csv 'source' column has them); check the list, or set it to null"
            )
        log.info(
            "left %d images of %s out of training (%d identities, %d images left)",
            data.n_excluded,
            exclude_of,
            data.num_classes,
            len(data),
        )
    return data


def _image_paths(pair_list: str) -> list[str]:
    """The image paths of a pair list, for ``train_data.exclude_images_of``."""
    if str(pair_list).lower().endswith(".bin"):
        raise ValueError(
            f"train_data.exclude_images_of={pair_list}: a .bin list holds aligned crops, not "
            "image paths, so its images cannot be matched to training images; give the list "
            "it was made from (LFW pairs text or CSV)"
        )
    return load_pairs(pair_list).images


def param_groups(
    model: torch.nn.Module,
    others: tuple,
    lr: float,
    backbone_lr_scale: float = 1.0,
    head_lr_scale: float = 1.0,
) -> list[dict]:
    """Optimizer groups: the backbone's trainable parameters at ``lr x backbone_lr_scale``
    (fine-tuning a loaded model gently), the head's and loss's at ``lr x head_lr_scale`` (a
    short run on small data: each class centre is updated only in the few steps its identity
    is in the batch)."""
    if head_lr_scale <= 0 or backbone_lr_scale < 0:
        raise ValueError(
            f"trainer.head_lr_scale={head_lr_scale:g} and trainer.backbone_lr_scale="
            f"{backbone_lr_scale:g}: the head's scale must be > 0 and the backbone's >= 0 (0 "
            "freezes it; trainer.freeze_stages freezes part of it)"
        )
    backbone = [p for p in model.parameters() if p.requires_grad]
    rest = [p for m in others if m is not None for p in m.parameters() if p.requires_grad]
    groups = [{"params": backbone, "lr": lr * backbone_lr_scale}]
    return groups + ([{"params": rest, "lr": lr * head_lr_scale}] if rest else [])


def make_plan(cfg: DictConfig, labels: np.ndarray, world: int = 1):
    """Global batches of ``trainer.batch_size`` x ``world`` (the batch size is per rank)."""
    kind, t = cfg.head.sampler, cfg.trainer
    size = t.batch_size * world
    if kind == "random":
        return RandomBatches(labels, size, cfg.seed)
    if kind == "balanced":
        return BalancedBatches(labels, size, cfg.seed)
    if kind == "identity":
        k = t.images_per_identity
        return IdentityBatches(labels, size // k, k, cfg.seed)
    raise ValueError(f"unknown sampler {kind!r}; use random, balanced or identity")


class RunStats(Hook):
    """Averages throughput and data-wait fraction over the run."""

    def __init__(self) -> None:
        self.ips, self.wait, self.start = [], [], time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        self.ips.append(trainer.metrics["images_per_s"])
        self.wait.append(trainer.metrics["data_wait_fraction"])

    def summary(self) -> dict:
        return {
            "wall_time_s": round(time.perf_counter() - self.start, 1),
            "images_per_s": float(np.median(self.ips)) if self.ips else None,
            "data_wait_fraction": float(np.mean(self.wait)) if self.wait else None,
        }


class PairValidation:
    """model -> {"sets": {name: metrics of each validation set}, "select": metrics of the
    selection list or None}.

    The sets (:func:`~face_rec.eval.suite.configured_sets`: ``val.sets``, and with
    ``val.bins_dir`` every standard ``.bin`` present) are what the run reports; a set without
    folds takes its threshold from its ``calibration_pairs`` when given, else 10-fold CV over its
    own pairs. ``val.select`` chooses ``best.pt`` and the value returned to sweepers:
    ``holdout`` (pairs of the identities the training data held out,
    :func:`~face_rec.data.holdout.holdout_pairs`), ``mean`` (the mean accuracy over the sets),
    a set's name, a pair list, ``last`` (no list: the final step's model is the result, as
    arcface_torch keeps it; no best.pt) or null (the first set). Only ``holdout``, ``last`` and a
    list that is not one of the sets keep the reported sets out of model selection.

    Each list's images are decoded (a ``.bin``) or aligned once per run and embedded once per
    validation, in batches, with flip TTA as ``eval.flip`` says.
    """

    def __init__(self, cfg: DictConfig, device: str, dataset=None) -> None:
        self.cfg, self.device, self.lists = cfg, device, {}
        self.sets = {s.name: s for s in configured_sets(cfg.val.sets, cfg.val.bins_dir)}
        if not self.sets:
            raise ValueError("validation has no sets: give val.sets or val=standard")
        self.select, self.select_name = None, cfg.val.select
        if cfg.val.select == "holdout":
            if not getattr(dataset, "held_rows", None):
                raise ValueError(
                    "val.select=holdout: the training data holds out no identities; set "
                    "train_data.holdout_fraction (packs only) or val.select=<set name | mean | "
                    "pair list>"
                )
            self.select = holdout_pairs(dataset)  # fixed pairs: the same list for every seed
        elif cfg.val.select and cfg.val.select not in (*self.sets, "mean", "last"):
            self.select = self.pair_list(cfg.val.select)
            self.select_name = Path(cfg.val.select).stem
        reported = self.reported_selection()
        if reported:
            log.warning(
                "best.pt and the sweep objective are chosen on %s, whose numbers the run also "
                "reports (optimistic for those sets); set val.select=holdout or another list",
                ", ".join(reported),
            )
        for s in self.sets.values():  # decoded / aligned now, once per run
            self.pair_list(s.pairs, s.image_root)
            if s.calibration_pairs:
                self.pair_list(s.calibration_pairs, s.image_root)

    def reported_selection(self) -> list[str]:
        """The reported sets that also choose the model (empty: none)."""
        what = self.cfg.val.select
        if what == "last":
            return []
        if self.select is not None:  # a list of its own, unless it is one of the sets' files
            same = Path(what).resolve() if what != "holdout" else None
            return [n for n, s in self.sets.items() if same == Path(s.pairs).resolve()]
        if what == "mean":
            return list(self.sets)
        return [what if what in self.sets else next(iter(self.sets))]

    @property
    def primary(self) -> PairSet:
        """The first set: its numbers are also the run's ``val`` and ``val/accuracy``."""
        return next(iter(self.sets.values()))

    @property
    def pairs(self) -> Pairs:
        """The first set's pairs (scores.csv follows them)."""
        return self.pair_list(self.primary.pairs, self.primary.image_root)[0]

    def pair_list(self, path, image_root=None) -> tuple[Pairs, PairImages]:
        key = str(Path(path).resolve())  # one list read and embedded once, however it is named
        if key not in self.lists:
            pairs = load_pairs(path, image_root)
            self.lists[key] = (pairs, prepare_pair_images(pairs, self.cfg))
        return self.lists[key]

    def __call__(self, model: torch.nn.Module) -> dict:
        e, embedded = self.cfg.eval, {}

        def embed(lst: tuple[Pairs, PairImages]) -> tuple:
            if id(lst) not in embedded:
                embedded[id(lst)] = embed_pairs(model, lst[1], e.batch_size, self.device, e.flip)
            return (*lst, embedded[id(lst)])

        results, seconds = {}, {}
        for name, s in self.sets.items():
            start = time.perf_counter()
            lst = self.pair_list(s.pairs, s.image_root)
            calib = None
            if lst[0].n_folds < 2 and s.calibration_pairs:
                calib = embed(self.pair_list(s.calibration_pairs, s.image_root))
            results[name] = measure_pairs(*embed(lst), calib, e.n_bootstrap, e.seed)
            seconds[name] = round(time.perf_counter() - start, 2)
        if self.select is not None:
            select = measure_pairs(*embed(self.select), None, 0, e.seed)
        elif self.cfg.val.select == "last":
            select = None
        elif self.cfg.val.select == "mean":
            select = {"accuracy_mean": mean_accuracy(results)}
        else:
            select = results[self.reported_selection()[0]]
        return {
            "sets": results,
            "select": select,
            "select_name": self.select_name,
            "seconds": seconds,
        }


def model_selection(cfg: DictConfig, validation: H.Validation, pv: PairValidation) -> dict:
    """What chose ``best.pt`` and the sweep objective, and what the reported numbers test."""
    tested = {
        name: f"{s.pairs} (final step; threshold: {validation.latest['sets'][name]['protocol']})"
        for name, s in pv.sets.items()
    }
    reported = pv.reported_selection()
    what = cfg.val.select
    if what == "holdout":
        n = validation.latest["select"]["n_pairs"]
        what = (
            f"{n} pairs of the identities held out of training "
            f"(train_data.holdout_fraction={cfg.train_data.holdout_fraction}, 10 "
            "identity-disjoint folds)"
        )
    elif what == "last":
        what = "nothing: val.select=last keeps the final step's model (last.pt), no best.pt"
    elif what == "mean":
        what = f"the mean accuracy over the sets {', '.join(pv.sets)}"
    elif not what:
        what = f"{reported[0]} (val.select=null: the first set)"
    note = (
        "the reported sets took no part in choosing the model"
        if not reported
        else f"OPTIMISTIC for {', '.join(reported)}: best.pt and the sweep objective were chosen "
        "on it; set val.select=holdout or another list"
    )
    return {
        "selected_on": what,
        "tested_on": tested,
        "best_checkpoint": "checkpoints/best.pt" if validation.best_step is not None else None,
        "best_step": validation.best_step,
        "best_selection_accuracy": (
            validation.best_value if validation.best_step is not None else None
        ),
        "note": note,
    }


def warn_fixed_magnitude(model: torch.nn.Module, loss_fn: torch.nn.Module) -> None:
    """MagFace learns the embedding's magnitude: a backbone whose last BatchNorm has a fixed (or
    no) scale pins each batch's mean squared norm to the dimension, which MagFace cannot move."""
    from face_rec.losses import MagFaceLoss

    last_bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)][-1:]
    pinned = last_bn and (last_bn[0].weight is None or not last_bn[0].weight.requires_grad)
    if isinstance(loss_fn, MagFaceLoss) and pinned:
        log.warning(
            "head=magface with a backbone whose embedding BatchNorm scale is fixed or absent: "
            "the magnitude cannot grow as MagFace needs (its official iResNet learns it); use "
            "+model.feature_scale=learned (iresnet*) or a backbone with a learned scale"
        )


def build_trainer(cfg: DictConfig, out_dir: Path) -> tuple[Trainer, H.Validation | None, RunStats]:
    """The trainer and its hooks; under torchrun, this rank's (hooks that write: rank 0 only)."""
    seed_everything(cfg.seed)
    rank, world = D.rank(), D.world_size()
    main = rank == 0
    device = resolve_device(cfg.trainer.device)
    if device == "cuda" and world > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    if cfg.trainer.ema_decay:  # before any data is read
        check_decay(cfg.trainer.ema_decay)
    dataset = training_data(cfg)
    log.info("training on %d images of %d identities", len(dataset), dataset.num_classes)
    model = instantiate(cfg.model)  # the same initial weights on every rank
    if world > 1:
        seed_everything(cfg.seed + rank)  # per-rank streams: dropout, centre shards, sampling
    head, loss_fn = None, instantiate(cfg.head.loss)
    warn_fixed_magnitude(model, loss_fn)
    if cfg.partial_fc:  # the centres sharded by identity, each with the head's sub-centres
        k = (cfg.head.module or {}).get("sub_centers", 1)
        loss_fn = PartialFC(
            cfg.model.embedding_dim, dataset.num_classes, loss_fn, cfg.partial_fc, sub_centers=k
        )
    elif cfg.head.module is not None:
        head = instantiate(cfg.head.module, num_classes=dataset.num_classes)
    frozen = freeze_stages(model, cfg.trainer.freeze_stages)
    optimizer = instantiate(cfg.optimizer)(
        param_groups(
            model,
            (head, loss_fn),
            cfg.optimizer.lr,
            cfg.trainer.backbone_lr_scale,
            cfg.trainer.head_lr_scale,
        )
    )
    scheduler = make_scheduler(optimizer, cfg.trainer.max_steps, **cfg.scheduler)
    weight = (
        class_weights(dataset.labels, cfg.train_data.class_weight_power)
        if cfg.train_data.class_weight_power
        else None
    )
    tb = H.TensorBoard(out_dir / "tensorboard", cfg.trainer.log_every) if main else None
    validation = None
    if cfg.val.sets or cfg.val.bins_dir:
        validation = H.Validation(
            PairValidation(cfg, device, dataset) if main else None,
            cfg.trainer.eval_every,
            tensorboard=tb,
        )
    stats = RunStats()
    config = OmegaConf.to_container(cfg, resolve=True)
    hooks = [H.LRSchedule(), H.StopOnNaN(), stats]
    hooks += [H.Progress(), tb] if main else []
    hooks += [validation] if validation is not None else []
    hooks += [
        H.Checkpoint(out_dir / "checkpoints", config, cfg.trainer.checkpoint_every, validation)
    ]
    trainer = Trainer(
        model,
        head,
        loss_fn,
        optimizer,
        scheduler,
        dataset,
        make_plan(cfg, dataset.labels, world),
        instantiate(cfg.augment, seed=cfg.seed + rank),
        cfg.trainer.max_steps,
        hooks,
        device,
        cfg.trainer.precision,
        cfg.trainer.grad_clip,
        cfg.trainer.accum_steps,
        cfg.trainer.channels_last,
        weight,
        cfg.trainer.num_workers,
        cfg.trainer.grad_clip_scope,
        frozen,
        cfg.trainer.compile,
        ema_decay=cfg.trainer.ema_decay,
    )
    return trainer, validation, stats


def resume_path(cfg: DictConfig, out_dir: Path) -> Path | None:
    if not cfg.resume:
        return None
    path = out_dir / "checkpoints" / "last.pt" if cfg.resume is True else Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: no checkpoint at {path}; pass resume=<path to last.pt>"
            " or run_name=<the run to continue> resume=true"
        )
    return path


def check_selection(cfg: DictConfig) -> None:
    """Before any data is read: ``val.select=holdout`` needs training packs that hold
    identities out (RecordIO and aligned folders hold none)."""
    data = cfg.train_data
    if not (cfg.val.sets or cfg.val.bins_dir) or cfg.val.select != "holdout":
        return
    if data.get("rec") or data.get("aligned_folder") or not data.get("holdout_fraction"):
        what = (
            "RecordIO"
            if data.get("rec")
            else "an aligned folder"
            if data.get("aligned_folder")
            else "packs"
        )
        raise ValueError(
            f"val.select=holdout, but the training data ({what}) holds out no identities: set "
            "val.select=last (keep the final model, as arcface_torch does; no list chooses it), "
            "val.select=<a pair list of people in neither the training data nor the reported "
            "sets>, or for packs train_data.holdout_fraction=0.1"
        )


def train_from_config(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train as ``cfg`` says, writing checkpoints, TensorBoard logs, metrics.json and
    config.yaml into ``out_dir``. Returns the metrics dict.

    Under torchrun every rank calls this; rank 0's ``out_dir`` is used and only rank 0 writes.
    Ranks started with different configs stop with an error naming the keys that differ.
    """
    check_config(cfg)  # before any data is read or a model built
    check_selection(cfg)
    commit = code_commit()  # now: the checkout may change while it trains
    info = D.init_distributed(cfg.trainer.backend)
    out_dir = Path(D.broadcast_object(str(out_dir)))
    config = OmegaConf.to_container(cfg, resolve=True)
    D.check_same_config({k: v for k, v in config.items() if k != "run_name"})
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer, validation, stats = build_trainer(cfg, out_dir)
    kept = keep_freed_memory_on(trainer.device, cfg.trainer.keep_freed_memory)
    path = resume_path(cfg, out_dir)
    if path is not None:
        state = load_checkpoint(path, trainer.device)
        trainer.load_state_dict(state)
        if validation is not None and "validation" in state:
            validation.load_state_dict(state["validation"])
        log.info("resumed from %s at step %d", path, trainer.state.step)
    trainer.train()
    metrics = {
        "train": {
            **stats.summary(),
            "steps": trainer.state.step,
            "epochs": trainer.state.epoch + trainer.state.batch_in_epoch / len(trainer.plan),
            "images": len(trainer.dataset),
            "identities": trainer.dataset.num_classes,
            "final_loss": trainer.metrics.get("loss"),
            "malloc_keeps_freed_memory": bool(kept),
            "compiled": trainer.compiled,
        },
        "machine": machine_info(trainer.device),  # what wall_time_s and images_per_s ran on
        "commit": commit,  # the code that trained (git; "+dirty" with local changes)
    }
    if info.world_size > 1:  # a replica that drifted would show here
        digests = D.all_gather_objects(_weights_digest(trainer.model))
        metrics["distributed"] = {"world_size": info.world_size, "backbone_sha256": digests}
        if trainer.ema is not None:  # the weights validated and saved
            averages = D.all_gather_objects(_weights_digest(trainer.ema.module))
            metrics["distributed"]["average_sha256"] = averages
            digests = [f"{d}/{a}" for d, a in zip(digests, averages, strict=True)]
        if len(set(digests)) > 1:
            log.error("the ranks' backbones (/ weight averages) differ after training: %s", digests)
    if not info.is_main:
        return metrics
    if validation is not None and validation.latest is not None:
        metrics.update(validation_metrics(cfg, validation))
        pv, latest = validation.evaluate, validation.latest
        write_roc(out_dir / "roc.csv", latest["sets"][pv.primary.name]["roc"])
        # per-pair scores of the final validation, for error analysis (notebooks/compare_runs)
        for i, (name, m) in enumerate(latest["sets"].items()):
            pairs = pv.pair_list(pv.sets[name].pairs, pv.sets[name].image_root)[0]
            write_scores(
                out_dir / ("scores.csv" if i == 0 else f"scores_{name}.csv"), pairs, m["scores"]
            )
    write_json(out_dir / "metrics.json", metrics)
    # finished: an earlier failed attempt's error.txt (resume=true) no longer describes the run,
    # and report.read_run would list it as failed
    (out_dir / "error.txt").unlink(missing_ok=True)
    return metrics


def validation_metrics(cfg: DictConfig, validation: H.Validation) -> dict:
    """metrics.json's validation part: ``val_sets`` (every set's final-step metrics), ``val``
    and ``val/accuracy`` (the first set's: what sweep reports read), ``val/<set>/accuracy``,
    ``val/mean_accuracy``, the selection list's ``select`` and ``select/accuracy`` (the sweep
    objective), ``model_selection``, ``val_history``."""
    pv, latest = validation.evaluate, validation.latest
    sets = {
        n: {k: v for k, v in m.items() if k not in ("scores", "roc")}
        for n, m in latest["sets"].items()
    }
    first = sets[pv.primary.name]
    out = {
        "val_sets": sets,
        "val": first,
        "val/accuracy": first["accuracy_mean"],
        "val/eer": first["eer"],
        "val/mean_accuracy": mean_accuracy(latest["sets"]),
        **{f"val/{n}/accuracy": m["accuracy_mean"] for n, m in sets.items()},
        "select/accuracy": latest["select"]["accuracy_mean"] if latest["select"] else None,
        "model_selection": model_selection(cfg, validation, pv),
        "val_history": validation.history,
    }
    if pv.select is not None:
        out["select"] = {k: v for k, v in latest["select"].items() if k not in ("scores", "roc")}
    return out


def _weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the parameters (not the buffers: DDP gives each rank's BatchNorm running
    statistics its own last batch; checkpoints hold rank 0's, as in any DDP job)."""
    h = hashlib.sha256()
    for name, t in model.named_parameters():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_entry(cfg: DictConfig, out_dir: str | Path, keep_going: bool = False) -> float | None:
    """``train.py``'s body: train, return ``cfg.optimized_metric`` for sweepers.

    A failure writes ``error.txt`` (the traceback) into the run directory; with ``keep_going``
    (a multirun) it is logged and NaN returned so the other jobs of the sweep still run, and the
    sweep report lists it.
    """
    import traceback

    try:
        metrics = train_from_config(cfg, out_dir)
    except Exception as e:
        if D.rank() != 0:
            raise
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        message = " ".join(f"{type(e).__name__}: {e}".split())
        (Path(out_dir) / "error.txt").write_text(f"{message}\n\n{traceback.format_exc()}")
        if not keep_going:
            raise
        log.exception("run failed; the sweep goes on (see %s/error.txt)", out_dir)
        return float("nan")
    finally:
        D.shutdown()
    return metrics.get(cfg.optimized_metric) if cfg.optimized_metric else None
