"""Train a face-recognition model: ``python train.py model=resnet50 head=arcface``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from face_rec.train import train_from_config

    metrics = train_from_config(cfg, HydraConfig.get().runtime.output_dir)
    return metrics.get(cfg.optimized_metric) if cfg.optimized_metric else None


if __name__ == "__main__":
    main()
