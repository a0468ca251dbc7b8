"""IJB-B / IJB-C 1:1 verification and 1:N identification:
``python eval_ijb.py checkpoint=<path> root=<IJB folder> target=IJBC``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="eval_ijb")
def main(cfg: DictConfig) -> float:
    """Returns TAR@FAR 1e-4 (insightface's reading) to sweepers; NaN, logged, when the pairs
    cannot resolve it (:func:`face_rec.eval.ijb_cli.sweep_value`)."""
    from hydra.core.hydra_config import HydraConfig

    from face_rec.eval.ijb_cli import evaluate_ijb_from_config, sweep_value

    return sweep_value(evaluate_ijb_from_config(cfg, HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
