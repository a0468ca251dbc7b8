"""Embed a folder of face photos: ``python embed.py checkpoint=<weights> input_dir=/photos``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="embed")
def main(cfg: DictConfig) -> None:
    from face_rec.embed_job import embed_from_config

    embed_from_config(cfg)


if __name__ == "__main__":
    main()
