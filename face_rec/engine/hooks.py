"""Trainer hooks: LR schedule, NaN guard, progress bar, TensorBoard, periodic verification,
checkpoints."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from tqdm import tqdm

from face_rec import distributed as D
from face_rec.engine.trainer import Hook, Trainer
from face_rec.utils.checkpoint import save_checkpoint

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


class LRSchedule(Hook):
    """Steps the LR scheduler once per optimizer step."""

    def after_step(self, trainer: Trainer) -> None:
        trainer.scheduler.step()


class StopOnNaN(Hook):
    """Stops training with a clear message when the loss is not finite; later hooks (checkpoints)
    do not run for that step, so the checkpoints on disk stay good."""

    def after_step(self, trainer: Trainer) -> None:
        loss = trainer.metrics["loss"]
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} at step {trainer.state.step} (lr {trainer.metrics['lr']:.3g}, "
                f"grad norm {trainer.metrics['grad_norm']:.3g}); lower optimizer.lr, set "
                "trainer.grad_clip, or lengthen the warm-up. Resume from the last checkpoint "
                "with resume=true after changing the config."
            )


class Progress(Hook):
    """A tqdm bar over the steps, with ETA, loss, accuracy and LR."""

    def before_train(self, trainer: Trainer) -> None:
        self.bar = tqdm(
            total=trainer.max_steps,
            initial=trainer.state.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )

    def after_step(self, trainer: Trainer) -> None:
        m = trainer.metrics
        post = {"loss": f"{m['loss']:.3f}", "lr": f"{m['lr']:.2e}"}
        if m["accuracy"] is not None:
            post["acc"] = f"{m['accuracy']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def after_train(self, trainer: Trainer) -> None:
        self.bar.close()


class TensorBoard(Hook):
    """Scalars every ``every`` steps (loss, accuracy, LR, images/s, data-wait fraction, grad
    norm), an embedding-norm histogram every ``hist_every`` steps, and validation results."""

    def __init__(self, log_dir: str | Path, every: int = 10, hist_every: int = 100) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.every, self.hist_every = every, hist_every

    def after_step(self, trainer: Trainer) -> None:
        step, m = trainer.state.step, trainer.metrics
        if step % self.every == 0 or step == trainer.max_steps:
            for key in (
                "loss",
                "accuracy",
                "lr",
                "lr_head",
                "images_per_s",
                "data_wait_fraction",
                "grad_norm",
            ):
                if m.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", m[key], step)
        if step % self.hist_every == 0:
            self.writer.add_histogram("train/embedding_norm", m["embedding_norms"], step)

    def log_validation(self, step: int, name: str, metrics: dict, prefix: str = "val") -> None:
        """``<prefix>/<name>/{accuracy,eer,auc,tar_at_far_*}`` scalars (and ``accuracy_kfold_cv``
        for a list scored at a calibration list's threshold) and the ROC figure."""
        from face_rec.eval.report import plot_roc_figure

        self.writer.add_scalar(f"{prefix}/{name}/accuracy", metrics["accuracy_mean"], step)
        if metrics.get("accuracy_kfold_cv"):
            cv = metrics["accuracy_kfold_cv"]["accuracy_mean"]
            self.writer.add_scalar(f"{prefix}/{name}/accuracy_kfold_cv", cv, step)
        self.writer.add_scalar(f"{prefix}/{name}/eer", metrics["eer"], step)
        self.writer.add_scalar(f"{prefix}/{name}/auc", metrics["auc"], step)
        for key, tar in metrics["tar_at_far"].items():
            if tar is not None:
                self.writer.add_scalar(f"{prefix}/{name}/tar_at_far_{key}", tar, step)
        self.writer.add_figure(f"{prefix}/{name}/roc", plot_roc_figure({name: metrics}), step)
        self.writer.flush()

    def after_train(self, trainer: Trainer) -> None:
        self.writer.close()


class Validation(Hook):
    """Verification every ``every`` steps and at the end. ``evaluate``: a function model ->
    {"sets": {name: metrics}, "select": metrics, "seconds": {name: s}} (the sets the run reports
    and the list that selects the model, e.g. :class:`face_rec.train.PairValidation`). Keeps
    ``history``, the latest results and whether the selection list's ``metric`` is the best so
    far (higher is better). Each set is logged to TensorBoard under ``val/<name>/`` and the
    selection list under ``select/``, with the validation's time.

    Under torchrun only rank 0 evaluates (the others pass ``evaluate=None``) and tells the others
    whether the result improved, so that all of them take part in saving ``best.pt``."""

    def __init__(
        self,
        evaluate,
        every: int,
        metric: str = "accuracy_mean",
        tensorboard: TensorBoard | None = None,
    ) -> None:
        self.evaluate, self.every, self.metric = evaluate, every, metric
        self.tensorboard = tensorboard
        self.history: list[dict] = []
        self.latest: dict | None = None
        self.best_value, self.best_step = -math.inf, None
        self.improved = False

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        self.improved = False
        if (self.every and step % self.every == 0) or step == trainer.max_steps:
            if self.evaluate is not None:
                self.run(trainer)
            self.improved = D.broadcast_object(self.improved)

    def run(self, trainer: Trainer) -> None:
        start, step = time.perf_counter(), trainer.state.step
        results = self.evaluate(trainer.eval_model)
        self.latest = results
        value = results["select"][self.metric] if results["select"] is not None else None
        self.improved = value is not None and value > self.best_value
        if self.improved:
            self.best_value, self.best_step = value, step
        seconds = round(time.perf_counter() - start, 1)
        summary = {"step": step, **{k: _summary(m) for k, m in results["sets"].items()}}
        summary["select"] = {"accuracy": value}
        summary["seconds"] = seconds
        summary["seconds_per_set"] = results.get("seconds", {})
        self.history.append(summary)
        log.info("validation at step %d (%.1f s): %s", step, seconds, summary)
        if self.tensorboard is not None:
            for name, m in results["sets"].items():
                self.tensorboard.log_validation(step, name, m)
            if value is None:  # val.select=last: nothing selects
                pass
            elif "eer" in results["select"]:  # a list of its own, not a set or the sets' mean
                name = results.get("select_name") or "select"
                self.tensorboard.log_validation(step, name, results["select"], "select")
            else:
                self.tensorboard.writer.add_scalar("select/accuracy", value, step)
            self.tensorboard.writer.add_scalar("val/seconds", seconds, step)

    def state_dict(self) -> dict:
        return {"history": self.history, "best_value": self.best_value, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_value = state["history"], state["best_value"]
        self.best_step = state.get("best_step")


def _summary(m: dict) -> dict:
    cv = m.get("accuracy_kfold_cv")
    return {
        "accuracy": m["accuracy_mean"],
        **({"accuracy_kfold_cv": cv["accuracy_mean"]} if cv else {}),
        "eer": m["eer"],
        "auc": m["auc"],
        "tar_at_far": m["tar_at_far"],
    }


class Checkpoint(Hook):
    """Atomic ``last.pt`` every ``every`` steps and at the end, ``best.pt`` whenever the
    validation hook reports an improvement. Each holds the trainer state and the resolved config.
    Every rank gathers the state (sharded centres); rank 0 writes."""

    def __init__(
        self, directory: str | Path, config: dict, every: int, validation: Validation | None = None
    ) -> None:
        self.dir, self.config, self.every = Path(directory), config, every
        self.validation = validation

    def state(self, trainer: Trainer) -> dict:
        state = trainer.state_dict()
        state["config"] = self.config
        if self.validation is not None:
            state["validation"] = self.validation.state_dict()
        return state

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        last = step == trainer.max_steps
        improved = self.validation is not None and self.validation.improved
        if not (last or improved or (self.every and step % self.every == 0)):
            return
        state = self.state(trainer)
        if D.rank() != 0:
            return
        if last or (self.every and step % self.every == 0):
            save_checkpoint(self.dir / "last.pt", state)
        if improved:
            save_checkpoint(self.dir / "best.pt", state)
