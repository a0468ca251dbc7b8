"""Closed-set identification on a gallery/probe CSV: ``python identify.py checkpoint=<path>
list=<file.csv>``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="identify")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from face_rec.eval.identify_cli import identify_from_config

    metrics = identify_from_config(cfg, HydraConfig.get().runtime.output_dir)
    return metrics["rank1"]


if __name__ == "__main__":
    main()
