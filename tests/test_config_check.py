"""check_config: the real configs pass; wrong types, unknown keys, missing and unresolvable
values are reported with their key before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from face_rec.config_check import ConfigError, check_config

from .conftest import REPO, TINY

CONF = REPO / "conf"
# group options that need a value the yaml leaves mandatory (???)
NEEDS = {
    "model=onnx": ["model.path=/models/m.onnx"],
    "train_data=aligned_folder": ["train_data.aligned_folder=/data/crops112"],
    "train_data=recordio": ["train_data.rec=/data/train.rec"],
}


def _compose(name: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(name, overrides=list(overrides))


def _options(*groups: str) -> list[str]:
    return [f"{g}={p.stem}" for g in groups for p in sorted((CONF / g).glob("*.yaml"))]


def _problems(name: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        check_config(_compose(name, *overrides))
    return str(e.value)


@pytest.mark.parametrize("name", ["train", "eval_lfw", "align", "eval_ijb", "identify"])
def test_default_configs_pass(name):
    check_config(_compose(name))


@pytest.mark.parametrize(
    "option",
    [  # an ONNX model evaluates, it does not train
        o
        for o in _options("head", "model", "experiment", "optimizer", "scheduler", "train_data")
        + _options("data")
        if o != "model=onnx"
    ],
)
def test_every_config_option_passes(option):
    check_config(_compose("train", option, *NEEDS.get(option, [])))


CHOICES = [
    o
    for o in _options("head", "model", "optimizer", "scheduler", "train_data")
    if o != "model=onnx"
]


@pytest.mark.parametrize("option", CHOICES)
@pytest.mark.parametrize(
    "experiment", [p.stem for p in sorted((CONF / "experiment").glob("*.yaml"))]
)
def test_a_command_line_choice_wins_over_every_experiment(experiment, option):
    """`python train.py experiment=<e> <group>=<option>` gets the option as it is alone, but
    for the keys the experiment sets for any option of the group (model.embedding_dim, the
    demo's model.input_size and train_data.min_images_per_identity, scheduler.warmup_steps).
    The experiment adds no key the option lacks, and sets no head or optimizer value: those
    are the option's own (else optimizer=adamw would train AdamW at SGD's lr 0.1, head=cosface
    CosFace at ArcFace's m 0.5); a recipe tunes them in an option of its own
    (conf/head/cosface_demo.yaml)."""
    group = option.split("=")[0]
    chosen = OmegaConf.to_container(
        _compose("train", option, "~experiment", *NEEDS.get(option, []))[group]
    )
    cfg = _compose("train", f"experiment={experiment}", option, *NEEDS.get(option, []))
    composed = OmegaConf.to_container(cfg[group])  # unresolved
    own = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml")
    assert not {"head", "optimizer"} & set(own), experiment
    set_by_experiment = set(own.get(group) or {})
    for key in set(chosen) - set_by_experiment:
        assert composed[key] == chosen[key], key
    assert set(composed) <= set(chosen), set(composed) - set(chosen)  # nothing added
    check_config(cfg)


@pytest.mark.parametrize("model", _options("model"))
def test_eval_with_every_model_passes(model):
    extra = NEEDS.get(model, [])
    check_config(_compose("eval_lfw", model, "checkpoint=/runs/x/last.pt", "pairs=/p.bin", *extra))


def test_the_overrides_of_the_tests_pass():
    check_config(_compose("train", *TINY, "partial_fc=0.5", "resume=true", "run_name=20240101"))
    check_config(_compose("train", "trainer.grad_clip=null", "val=none", "head=triplet"))


def test_a_string_for_a_float_names_key_value_and_type():
    message = _problems("train", "head.loss.m=abc")
    assert "head.loss.m" in message and "'abc'" in message and "float" in message
    assert message.startswith("config error: head.loss.m = 'abc' (str) must be float")
    assert "CosFaceLoss" in message  # the cpu preset's head


def test_schema_sections_are_type_checked():
    message = _problems("train", "trainer.max_steps=ten")
    assert "trainer.max_steps = 'ten'" in message and "must be int" in message
    assert "eval.flip = 1 (int) must be bool" in _problems("train", "eval.flip=1")


def test_optimizer_lr_is_checked_despite_its_tensor_union():
    assert "optimizer.lr = 'fast' (str) must be float" in _problems("train", "optimizer.lr=fast")


def test_unknown_keys_are_named():
    message = _problems("train", "+trainer.max_step=5")
    assert "trainer.max_step is not a key" in message and "did you mean max_steps?" in message
    message = _problems("train", "+head.loss.mm=3")
    assert "head.loss.mm is not a parameter of face_rec.losses.CosFaceLoss" in message
    assert "head.loss.s is not a parameter" in _problems("train", "head=softmax", "+head.loss.s=3")
    assert "seeed is not a key" in _problems("train", "+seeed=1")


def test_model_keys_are_checked_against_the_registered_backbone():
    message = _problems("train", "model=resnet18", "model.dropout=x", "+model.depth=3")
    assert "model.dropout = 'x' (str) must be float" in message
    assert "model.depth is not a parameter" in message
    # the sweep report shows this failure under this text (tests/test_sweep.py)
    assert "unknown backbone 'nosuchnet'" in _problems("train", "model.name=nosuchnet")


@pytest.mark.parametrize("value", ["0.3", "1", "64"])
def test_right_types_pass(value):
    check_config(_compose("train", f"head.loss.m={value}", f"optimizer.lr={value}"))


def test_every_problem_is_listed_one_per_line():
    with pytest.raises(ConfigError) as e:
        check_config(_compose("train", "head.loss.m=abc", "trainer.max_steps=ten", "seed=x"))
    assert len(e.value.problems) == 3
    assert str(e.value).splitlines() == [f"config error: {p}" for p in e.value.problems]
    assert isinstance(e.value, ValueError)


def test_missing_and_unresolvable_values_are_named():
    assert "train_data.aligned_folder is missing" in _problems("train", "train_data=aligned_folder")
    message = _problems("train", "paths.data_dir=${oc.env:FACE_REC_NO_SUCH_VARIABLE}")
    assert "paths.data_dir cannot be resolved" in message and "FACE_REC_NO_SUCH_VARIABLE" in message


def test_align_config_is_checked():
    message = _problems("align", "align.workers=two", "align.detector.factor=x")
    assert "align.workers = 'two' (str) must be int | None" in message
    assert "align.detector.factor = 'x' (str) must be float" in message


# --- the type rules, on a target of this module


class Opaque:
    """A class check_config cannot check values against."""


def typed(
    rate: float = 0.1,
    steps: int = 1,
    flag: bool = False,
    path: Path | None = None,
    sizes: list[int] = (),
    pair: tuple[float, float] = (0.0, 0.0),
    kind: Literal["a", "b"] = "a",
    lr: float | torch.Tensor = 0.1,
    anything=None,
    thing: Opaque | None = None,
) -> None:
    """Annotations of every kind check_config knows."""


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("rate", 1, True),
        ("rate", 0.5, True),
        ("rate", True, False),
        ("rate", "x", False),
        ("steps", 2, True),
        ("steps", 2.0, False),
        ("steps", True, False),
        ("flag", True, True),
        ("flag", 1, False),
        ("path", "some/dir", True),
        ("path", None, True),
        ("path", 3, False),
        ("sizes", [1, 2], True),
        ("sizes", [1, "a"], False),
        ("sizes", "ab", False),
        ("pair", [1, 2.0], True),
        ("pair", [1.0], False),
        ("kind", "b", True),
        ("kind", "c", False),
        ("lr", 0.1, True),
        ("lr", "fast", False),
        ("anything", "whatever", True),
        ("thing", "whatever", True),
    ],
)
def test_type_rules(key, value, ok):
    cfg = OmegaConf.create({"model": {"_target_": f"{__name__}.typed", key: value}})
    if ok:
        check_config(cfg)
    else:
        with pytest.raises(ConfigError, match=f"model.{key} = "):
            check_config(cfg)


def test_a_target_that_cannot_be_imported_is_reported():
    cfg = OmegaConf.create({"model": {"_target_": "face_rec.losses.NoSuchLoss"}})
    with pytest.raises(ConfigError, match=r"model._target_ = 'face_rec.losses.NoSuchLoss' cannot"):
        check_config(cfg)


def test_train_stops_on_a_bad_value_before_reading_any_data(tmp_path):
    """train.py head.loss.m=abc: the error names key, value and type, and nothing was read."""
    from face_rec.train import train_from_config

    cfg = _compose(
        "train",
        "head.loss.m=abc",
        f"train_data.sources.lfw.pack_dir={tmp_path}/absent_pack",
        f"train_data.sources.lfw.image_dir={tmp_path}/absent_images",
    )
    with pytest.raises(ConfigError, match=r"head\.loss\.m = 'abc' \(str\) must be float"):
        train_from_config(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "absent_pack").exists()


@pytest.mark.parametrize(("value", "ok"), [("true", True), ("false", True), ("auto", False)])
def test_trainer_compile_takes_a_bool(value, ok):
    cfg = _compose("train", f"trainer.compile={value}")
    if ok:
        check_config(cfg)
    else:
        assert f"trainer.compile = '{value}'" in _problems("train", f"trainer.compile={value}")
