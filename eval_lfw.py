"""Verification on a pair list: ``python eval_lfw.py checkpoint=<path>``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="eval_lfw")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from face_rec.eval.cli import evaluate_from_config

    metrics = evaluate_from_config(cfg, HydraConfig.get().runtime.output_dir)
    return metrics["accuracy_mean"]


if __name__ == "__main__":
    main()
