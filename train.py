"""Train a face-recognition model: ``python train.py model=resnet50 head=arcface``."""

import os

import hydra
from omegaconf import DictConfig, OmegaConf

# torchrun ranks > 0 write their Hydra logs beside rank 0's, not over them
RANK = os.environ.get("RANK", "0")
OmegaConf.register_new_resolver("rank_suffix", lambda: "" if RANK == "0" else f".rank{RANK}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from face_rec.train import train_entry

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return train_entry(cfg, hydra_cfg.runtime.output_dir, keep_going=multirun)


if __name__ == "__main__":
    main()
