"""Export a checkpoint for deployment: ``python export.py checkpoint=<path> [format=onnx]``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from face_rec.export import export_from_config

    result = export_from_config(cfg, HydraConfig.get().runtime.output_dir)
    return result["max_abs_diff"]


if __name__ == "__main__":
    main()
