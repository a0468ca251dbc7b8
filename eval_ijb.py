"""IJB-B / IJB-C 1:1 verification and 1:N identification:
``python eval_ijb.py checkpoint=<path> root=<IJB folder> target=IJBC``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="eval_ijb")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from face_rec.eval.ijb_cli import evaluate_ijb_from_config

    metrics = evaluate_ijb_from_config(cfg, HydraConfig.get().runtime.output_dir)
    return metrics["verification"]["tar_at_far"]["1e-4"]


if __name__ == "__main__":
    main()
