"""ONNX / TorchScript export and OnnxModel: parity with torch, metadata, input conventions,
errors, and ``python export.py`` end to end through an evaluation."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from face_rec.align.warp import ARCFACE_TEMPLATE_112
from face_rec.config_check import ConfigError, check_config
from face_rec.data.pairs import read_bin, write_bin
from face_rec.eval.cli import build_model
from face_rec.eval.embed import embed_crops
from face_rec.eval.verification import PairImages, evaluate_pairs
from face_rec.export import (
    TORCHSCRIPT_METADATA,
    ParityError,
    export_from_config,
    export_onnx,
    export_torchscript,
)
from face_rec.models.onnx_model import OnnxModel, decode_metadata
from face_rec.models.preprocess import Preprocessing
from face_rec.models.registry import create_model
from face_rec.utils.checkpoint import model_from_checkpoint, save_checkpoint

from ..conftest import REPO

ATOL = 1e-4
CORE = ("mobilefacenet", "iresnet18")


def _spec(name: str) -> dict:
    """A small backbone: 32 px, width 0.25 (mobilefacenet at full width: it is small)."""
    width = 1.0 if name == "mobilefacenet" else 0.25
    return {"name": name, "embedding_dim": 32, "input_size": 32, "width": width, "dropout": 0.0}


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norm statistics measured on random inputs, as training leaves them (a fresh model's
    unit running variances blow deep activations up to 1e9), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    size = model.input_size
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, size, size, generator=g) * 2 - 1)
    return model.eval()


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    spec = _spec(name)
    return _trained_like(create_model(spec.pop("name"), **spec), seed)


def _crops(n: int, size: int = 112, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _x(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module", params=CORE)
def exported(request, tmp_path_factory):
    """(torch model, .onnx path, export result) for mobilefacenet and iresnet18, exported with 5
    given 112 px crops (resized to 32)."""
    model = _model(request.param)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    meta = {"model_name": request.param, "training_config_summary": {"head": "cosface"}}
    result = export_onnx(model, path, metadata=meta, sample_crops=_crops(5))
    return model, path, result


def test_export_matches_torch_for_a_batch_of_5_and_of_1(exported):
    model, path, result = exported
    assert result["passed"] and result["max_abs_diff"] < ATOL
    assert result["max_abs_diff_normalized"] < 1e-4  # what verification compares
    assert (result["crops"], result["n_images"], result["opset"]) == ("real", 5, 17)
    assert result["exporter"] in ("dynamo", "legacy")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name, inp.type) == ("input", "embedding", "tensor(float)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]  # dynamic batch
    assert out.shape[1] == 32
    x = _x(5)
    with torch.no_grad():
        for batch in (x, x[:1]):
            got = session.run(None, {"input": batch.numpy()})[0]
            ref = model(batch).numpy()
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
            assert np.abs(ref).max() > 0.1  # embeddings of a real scale, not ~0


# one of each unit; the deeper members of a family (iresnet50-200, ir50/101, resnet34/50) repeat
# the same layers and take minutes to export on 2 cores
FAMILIES = ["ir18", "iresnet34", "resnet18"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in CORE])
def test_every_backbone_family_exports_with_parity(name, tmp_path):
    result = export_onnx(_model(name), tmp_path / "m.onnx")
    # float32 rounding: torch itself is 1e-4 off float64 on resnet50, so the bound is relative
    assert result["passed"] and result["max_rel_diff"] < 1e-4
    tolerance = 1e-4 + 1e-4 * result["max_abs_embedding"]
    assert result["max_abs_diff"] <= result["tolerance"] == pytest.approx(tolerance)
    assert (result["crops"], result["n_images"]) == ("random", 8)


def test_the_legacy_exporter_is_the_fallback(tmp_path, monkeypatch, caplog):
    export = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo broke")
        return export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    with caplog.at_level(logging.WARNING):
        result = export_onnx(_model("iresnet18"), tmp_path / "m.onnx", sample_crops=_crops(3))
    assert result["exporter"] == "legacy" and "dynamo broke" in caplog.text
    assert result["passed"] and result["max_abs_diff"] < ATOL and result["opset"] == 17
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch


def test_metadata_round_trips(exported):
    _, path, result = exported
    meta = decode_metadata({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    assert meta["colour"] == "RGB" and meta["mean"] == meta["std"] == [127.5] * 3
    assert meta["input_size"] == 32 and meta["embedding_dim"] == 32
    assert meta["alignment_template"] == {"size": 112, "points": ARCFACE_TEMPLATE_112.tolist()}
    assert meta["model_name"] in CORE and meta["training_config_summary"] == {"head": "cosface"}
    assert meta["torch_version"] == torch.__version__ and meta["face_rec_version"]
    assert meta["exported_at"] and meta["embedding_normalized"] is False
    assert OnnxModel(path).metadata == meta == result["metadata"]


def test_onnx_model_reproduces_the_torch_embeddings(exported):
    model, path, _ = exported
    onnx_model = OnnxModel(path)
    assert (onnx_model.input_size, onnx_model.embedding_dim) == (32, 32)
    assert set(onnx_model.preprocessing_source.values()) == {"metadata"}
    x = _x(4)
    with torch.no_grad():
        got, ref = onnx_model(x), model(x)
    assert got.dtype == torch.float32 and got.shape == (4, 32)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    crops = _crops(6, seed=3)  # 112 px: both resized to input_size by the evaluation
    np.testing.assert_allclose(embed_crops(onnx_model, crops), embed_crops(model, crops), atol=1e-5)
    with pytest.raises(ValueError, match="resize crops to the model's input_size"):
        onnx_model(_x(1, size=48))


def test_a_bgr_convention_given_to_the_constructor_flips_the_channels(exported, caplog):
    model, path, _ = exported
    with caplog.at_level(logging.WARNING):
        bgr = OnnxModel(path, colour="BGR")
    assert "metadata says RGB" in caplog.text
    assert bgr.preprocessing_source["colour"] == "argument"
    x = _x(3)
    with torch.no_grad():
        got, flipped, plain = bgr(x), model(x.flip(1)), model(x)
    torch.testing.assert_close(got, flipped, atol=ATOL, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-2)


def test_a_file_without_metadata_gets_insightfaces_convention_or_the_arguments(exported, tmp_path):
    model, path, _ = exported
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    x = _x(2)
    plain = OnnxModel(bare)  # insightface: RGB (x - 127.5) / 127.5, i.e. face_rec's input
    assert set(plain.preprocessing_source.values()) == {"insightface default"}
    assert plain.metadata == {}
    raw = OnnxModel(bare, colour="BGR", mean=0, std=[1, 1, 1])  # 0..255 BGR
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=ATOL, rtol=0)
        ref = model(((x + 1) * 127.5).flip(1))  # 0..255 input: embeddings in the hundreds
        torch.testing.assert_close(raw(x), ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_an_mxnet_conversion_takes_raw_pixels_as_insightface_decides(tmp_path):
    """insightface's ArcFaceONNX rule: Sub and Mul among the first nodes -> mean 0, std 1."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["data", "m"], ["a"], name="_minusscalar0"),
            helper.make_node("Mul", ["a", "s"], ["b"], name="_mulscalar0"),
            helper.make_node("GlobalAveragePool", ["b"], ["c"], name="pool"),
            helper.make_node("Flatten", ["c"], ["fc1"], name="flat"),
        ],
        "mxnet",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor("m", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.0078125]),
        ],
    )
    path = tmp_path / "mxnet.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = OnnxModel(path)
    assert model.preprocessing == Preprocessing("RGB", (0.0,) * 3, (1.0,) * 3)
    assert (model.input_size, model.embedding_dim) == (8, 3)  # static input shape
    x = _x(2, size=8)
    expected = ((x + 1) * 127.5 - 127.5).mean((2, 3)) * 0.0078125  # the graph on 0..255 input
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_clear_errors_for_a_bad_file_or_a_missing_onnxruntime(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.onnx.*model.path="):
        OnnxModel(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx.*cannot be loaded by onnxruntime"):
        OnnxModel(tmp_path / "junk.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[onnx\]'"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[onnx\]'"):
        export_onnx(nn.Linear(2, 2), tmp_path / "x.onnx")


class _Noisy(nn.Module):
    """Its exported graph draws other random numbers than torch does: parity must fail."""

    input_size = 8

    def forward(self, x):
        return x.flatten(1) + torch.randn_like(x.flatten(1))


def test_a_failed_parity_check_raises_and_writes_nothing(tmp_path):
    with pytest.raises(ParityError, match="differs from the torch model.*not written"):
        export_onnx(_Noisy(), tmp_path / "noisy.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_has_parity_and_metadata(tmp_path):
    model = _model("mobilefacenet")
    result = export_torchscript(model, tmp_path / "m.pt", metadata={"model_name": "mfn"})
    assert result["passed"] and result["max_abs_diff"] < ATOL
    files = {TORCHSCRIPT_METADATA: ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    meta = json.loads(files[TORCHSCRIPT_METADATA])
    assert meta["model_name"] == "mfn" and meta["input_size"] == 32 and meta["colour"] == "RGB"
    x = _x(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=ATOL, rtol=0)


# --- python export.py and python eval_lfw.py model=onnx


def _compose(name: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A hand-made checkpoint of a small mobilefacenet and its training config."""
    tmp = tmp_path_factory.mktemp("ckpt")
    spec = _spec("mobilefacenet")
    model = _model("mobilefacenet", seed=4)
    config = {
        "model": {"_target_": "face_rec.models.registry.create_model", **spec},
        "head": {"name": "cosface"},
        "train_data": {"sources": {"lfw": {}}},
        "trainer": {"max_steps": 3},
        "seed": 4,
        "run_name": "tiny",
    }
    save_checkpoint(tmp / "last.pt", {"model": model.state_dict(), "config": config})
    return tmp / "last.pt"


def _pack(path, crops):
    path.mkdir()
    np.save(path / "images.npy", crops)
    (path / "summary.json").write_text(json.dumps({"complete": True}))
    return path


def test_export_from_config_then_evaluation_matches_torch(checkpoint, tmp_path, capsys):
    pack = _pack(tmp_path / "pack", _crops(10, seed=5))
    cfg = _compose(
        "export",
        f"checkpoint={checkpoint}",
        f"output={tmp_path}/model.onnx",
        f"parity_pack={pack}",
        "parity_images=6",
    )
    result = export_from_config(cfg, tmp_path / "run")
    assert result["passed"] and result["max_abs_diff"] < ATOL
    assert (result["crops"], result["n_images"]) == ("real", 6)
    assert "exported mobilefacenet" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "export.json").read_text())["passed"] is True
    onnx_model = OnnxModel(tmp_path / "model.onnx")
    summary = onnx_model.metadata["training_config_summary"]
    assert summary["head"] == "cosface" and summary["train_data"] == ["lfw"]
    assert summary["model"]["name"] == "mobilefacenet" and summary["max_steps"] == 3

    rng = np.random.default_rng(6)  # pairs: near-duplicates vs other images
    base = rng.integers(0, 256, (40, 112, 112, 3)).astype(np.uint8)
    noisy = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    same = np.arange(40) % 2 == 0
    right = np.where(same[:, None, None, None], noisy, np.roll(noisy, 1, axis=0))
    write_bin(tmp_path / "t.bin", base, right, same)
    pairs = read_bin(tmp_path / "t.bin")
    images = PairImages(pairs.crops, [""] * len(pairs.images), np.zeros(len(pairs.images), bool))
    by_onnx = evaluate_pairs(onnx_model, pairs, images, batch_size=16, n_bootstrap=10)
    by_torch = evaluate_pairs(
        model_from_checkpoint(checkpoint), pairs, images, batch_size=16, n_bootstrap=10
    )
    np.testing.assert_allclose(by_onnx["scores"], by_torch["scores"], atol=1e-5)
    assert by_onnx["accuracy_mean"] == by_torch["accuracy_mean"]
    assert by_onnx["auc"] == pytest.approx(by_torch["auc"], abs=1e-6)


def test_export_defaults_beside_the_checkpoint_and_random_crops_without_a_pack(
    checkpoint, tmp_path, caplog
):
    cfg = _compose(
        "export", f"checkpoint={checkpoint}", "format=torchscript", f"parity_pack={tmp_path}/no"
    )
    with caplog.at_level(logging.WARNING):
        result = export_from_config(cfg)
    assert result["path"] == str(checkpoint.with_suffix(".torchscript.pt"))
    assert result["crops"] == "random" and "random crops" in caplog.text
    checkpoint.with_suffix(".torchscript.pt").unlink()


def test_export_config_errors_name_the_key(checkpoint):
    with pytest.raises(
        ConfigError, match=r"format = 'tflite' \(str\) must be one of 'onnx', 'torchscript'"
    ):
        export_from_config(_compose("export", f"checkpoint={checkpoint}", "format=tflite"))
    with pytest.raises(ConfigError, match="checkpoint is missing"):
        export_from_config(_compose("export"))


def test_eval_lfw_builds_the_onnx_model_without_the_random_init_warning(exported, tmp_path, caplog):
    _, path, _ = exported
    cfg = _compose("eval_lfw", "model=onnx", f"model.path={path}", f"pairs={tmp_path}/p.bin")
    check_config(cfg)
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg)
    assert isinstance(model, OnnxModel) and model.input_size == 32
    assert "RANDOMLY" not in caplog.text
    with pytest.raises(ConfigError, match="model.path is missing"):
        check_config(_compose("eval_lfw", "model=onnx", f"pairs={tmp_path}/p.bin"))


def test_export_py_takes_published_weights_and_keeps_their_colour_order(tmp_path):
    """An AdaFace .ckpt exports with its BGR conversion inside: the ONNX file takes face_rec's
    RGB input like every face_rec export, and reproduces the loaded torch model."""
    from face_rec.models import load_model

    from .test_published import adaface_state

    sd = adaface_state()
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "ada.ckpt")
    cfg = _compose(
        "export", f"checkpoint={tmp_path}/ada.ckpt", f"parity_pack={tmp_path}/no", "parity_images=4"
    )
    result = export_from_config(cfg)
    meta = result["metadata"]
    assert (meta["model_name"], meta["source_format"], meta["colour"]) == ("ir18", "adaface", "RGB")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = load_model(tmp_path / "ada.ckpt")(x).numpy()
    got = ort.InferenceSession(result["path"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4 + 1e-4 * np.abs(ref).max())
