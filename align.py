"""Detect, align and pack a folder of face photos: ``python align.py data=lfw``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="align")
def main(cfg: DictConfig) -> None:
    from face_rec.align.cli import align_from_config

    align_from_config(cfg)


if __name__ == "__main__":
    main()
