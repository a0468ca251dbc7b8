"""Published weights (insightface arcface_torch IResNet, AdaFace IR) load through explicit key
maps and reproduce a reference forward written from the documented architectures."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from face_rec.models.published import WeightsError, load_model

DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def _bn(shape_c, g, prefix, affine=True):
    out = {
        f"{prefix}.running_mean": torch.randn(shape_c, generator=g) * 0.1,
        f"{prefix}.running_var": torch.rand(shape_c, generator=g) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }
    if affine:
        out[f"{prefix}.weight"] = torch.rand(shape_c, generator=g) + 0.5
        out[f"{prefix}.bias"] = torch.randn(shape_c, generator=g) * 0.1
    return out


def _conv(cout, cin, k, g):
    return torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5


def insightface_state(depths, dim=32, side=2, seed=0):
    """arcface_torch iresnet.py's state dict layout, written from its documented keys."""
    g = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": _conv(64, 3, 3, g), **_bn(64, g, "bn1")}
    sd["prelu.weight"] = torch.rand(64, generator=g) * 0.3
    cin = 64
    for s, (d, w) in enumerate(zip(depths, WIDTHS, strict=True), 1):
        for i in range(d):
            p = f"layer{s}.{i}"
            sd |= _bn(cin, g, f"{p}.bn1") | {f"{p}.conv1.weight": _conv(w, cin, 3, g)}
            sd |= _bn(w, g, f"{p}.bn2") | {f"{p}.prelu.weight": torch.rand(w, generator=g) * 0.3}
            sd |= {f"{p}.conv2.weight": _conv(w, w, 3, g)} | _bn(w, g, f"{p}.bn3")
            if i == 0:
                sd |= {f"{p}.downsample.0.weight": _conv(w, cin, 1, g)}
                sd |= _bn(w, g, f"{p}.downsample.1")
            cin = w
    sd |= _bn(512, g, "bn2")
    sd["fc.weight"] = torch.randn(dim, 512 * side * side, generator=g) * 0.02
    sd["fc.bias"] = torch.randn(dim, generator=g) * 0.1
    sd |= _bn(dim, g, "features")
    sd["features.weight"] = torch.ones(dim)  # fixed at 1 in insightface
    return sd


def _norm(x, sd, p):
    w, b = sd.get(f"{p}.weight"), sd.get(f"{p}.bias")
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], w, b, False, 0, 1e-5)


def insightface_reference(sd, x):
    """IResNet forward from the state dict alone (IBasicBlock: bn1-conv1-bn2-prelu-conv2-bn3,
    downsample on the first block of each stage; bn2-flatten-fc-features)."""
    x = F.prelu(_norm(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"), sd["prelu.weight"])
    for s in range(1, 5):
        i = 0
        while f"layer{s}.{i}.bn1.weight" in sd:
            p, stride = f"layer{s}.{i}", 2 if i == 0 else 1
            y = F.conv2d(_norm(x, sd, f"{p}.bn1"), sd[f"{p}.conv1.weight"], padding=1)
            y = F.prelu(_norm(y, sd, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            y = _norm(
                F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn3"
            )
            if f"{p}.downsample.0.weight" in sd:
                short = F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride)
                x = y + _norm(short, sd, f"{p}.downsample.1")
            else:
                x = y + x
            i += 1
    x = _norm(x, sd, "bn2").flatten(1)
    return _norm(F.linear(x, sd["fc.weight"], sd["fc.bias"]), sd, "features")


def adaface_state(blocks=(2, 2, 2, 2), side=2, seed=1):
    """AdaFace net.py's IR layout (``model.`` prefix inside a Lightning ``state_dict``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"input_layer.0.weight": _conv(64, 3, 3, g), **_bn(64, g, "input_layer.1")}
    sd["input_layer.2.weight"] = torch.rand(64, generator=g) * 0.3
    k, cin = 0, 64
    for n, w in zip(blocks, WIDTHS, strict=True):
        for _ in range(n):
            p = f"body.{k}"
            sd |= _bn(cin, g, f"{p}.res_layer.0") | {f"{p}.res_layer.1.weight": _conv(w, cin, 3, g)}
            sd |= _bn(w, g, f"{p}.res_layer.2")
            sd[f"{p}.res_layer.3.weight"] = torch.rand(w, generator=g) * 0.3
            sd |= {f"{p}.res_layer.4.weight": _conv(w, w, 3, g)} | _bn(w, g, f"{p}.res_layer.5")
            if cin != w:
                sd |= {f"{p}.shortcut_layer.0.weight": _conv(w, cin, 1, g)}
                sd |= _bn(w, g, f"{p}.shortcut_layer.1")
            k, cin = k + 1, w
    sd |= _bn(512, g, "output_layer.0")
    sd["output_layer.3.weight"] = torch.randn(512, 512 * side * side, generator=g) * 0.02
    sd["output_layer.3.bias"] = torch.randn(512, generator=g) * 0.1
    sd |= _bn(512, g, "output_layer.4", affine=False)
    return sd


def adaface_reference(sd, x_bgr, blocks=(2, 2, 2, 2)):
    """IR forward from the state dict alone (max-pool shortcut where the width is kept)."""
    x = _norm(F.conv2d(x_bgr, sd["input_layer.0.weight"], padding=1), sd, "input_layer.1")
    x = F.prelu(x, sd["input_layer.2.weight"])
    k = 0
    for n in blocks:
        for j in range(n):
            p, stride = f"body.{k}", 2 if j == 0 else 1
            y = F.conv2d(_norm(x, sd, f"{p}.res_layer.0"), sd[f"{p}.res_layer.1.weight"], padding=1)
            y = F.prelu(_norm(y, sd, f"{p}.res_layer.2"), sd[f"{p}.res_layer.3.weight"])
            y = F.conv2d(y, sd[f"{p}.res_layer.4.weight"], stride=stride, padding=1)
            y = _norm(y, sd, f"{p}.res_layer.5")
            if f"{p}.shortcut_layer.0.weight" in sd:
                s = F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride)
                x = y + _norm(s, sd, f"{p}.shortcut_layer.1")
            else:
                x = y + F.max_pool2d(x, 1, stride)
            k += 1
    x = _norm(x, sd, "output_layer.0").flatten(1)
    return _norm(
        F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"]), sd, "output_layer.4"
    )


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_insightface_backbone_pth_loads_and_matches_the_reference(tmp_path, name):
    sd = insightface_state(DEPTHS[name])
    torch.save(sd, tmp_path / "backbone.pth")
    model = load_model(tmp_path / "backbone.pth")
    assert type(model).__name__ == "ResNetFace" and len(model.body) == sum(DEPTHS[name])
    assert model.input_size == 32 and not model.training
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert _rel(model(x), insightface_reference(sd, x)) < 1e-4
    assert not model.neck.features.weight.requires_grad  # fixed at 1, as insightface
    named = load_model(tmp_path / "backbone.pth", name=name)
    assert torch.equal(named.neck.fc.weight, model.neck.fc.weight)


def test_adaface_ckpt_loads_takes_rgb_and_feeds_the_model_bgr(tmp_path):
    sd = adaface_state()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 26}
    ckpt["state_dict"]["head.kernel"] = torch.randn(512, 10)  # the head is not the backbone
    torch.save(ckpt, tmp_path / "adaface_ir18.ckpt")
    model = load_model(tmp_path / "adaface_ir18.ckpt")
    assert model.preprocessing.colour == "BGR" and model.input_size == 32
    rgb = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(rgb)
        assert _rel(out, adaface_reference(sd, rgb.flip(1))) < 1e-4
        assert _rel(out, adaface_reference(sd, rgb)) > 1e-2  # colour order matters


def test_a_missing_or_misshaped_key_is_listed_with_the_format(tmp_path):
    sd = insightface_state(DEPTHS["iresnet18"])
    del sd["layer2.1.conv2.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"insightface weights.*layer2\.1\.conv2\.weight.*extra"):
        load_model(tmp_path / "bad.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not a face_rec checkpoint, an insightface"):
        load_model(tmp_path / "other.pth")
    sd = insightface_state(DEPTHS["iresnet18"])
    with pytest.raises(WeightsError, match=r"other sizes: set model\.embedding_dim=32"):
        torch.save(sd, tmp_path / "ok.pth")
        load_model(tmp_path / "ok.pth", name="iresnet18", embedding_dim=64)


def test_model_weights_in_the_config_load_published_weights(tmp_path):
    from face_rec.models.registry import create_model

    sd = insightface_state(DEPTHS["iresnet18"], dim=16)
    torch.save(sd, tmp_path / "backbone.pth")
    model = create_model(
        "iresnet18", embedding_dim=16, input_size=32, weights=str(tmp_path / "backbone.pth")
    ).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert _rel(model(x), insightface_reference(sd, x)) < 1e-4


def test_an_r50_with_a_ddp_prefix_and_no_batch_counters_loads(tmp_path):
    """ArcFace's r50 layout (3, 4, 14, 3), as saved from DDP ("module.") by an older torch
    (no num_batches_tracked): loads and matches the reference."""
    sd = insightface_state((3, 4, 14, 3), dim=512, side=2, seed=3)
    saved = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(saved, tmp_path / "backbone.pth")
    model = load_model(tmp_path / "backbone.pth", name="iresnet50")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert _rel(model(x), insightface_reference(sd, x)) < 1e-4


def test_weights_of_another_model_or_sizes_name_what_to_set(tmp_path):
    from face_rec.models.registry import create_model

    torch.save(insightface_state(DEPTHS["iresnet18"], dim=32), tmp_path / "b.pth")
    with pytest.raises(WeightsError, match=r"model\.embedding_dim=32 \(config: 128\)"):
        create_model("iresnet18", embedding_dim=128, input_size=32, weights=str(tmp_path / "b.pth"))
    for other in ("iresnet34", "mobilefacenet"):
        with pytest.raises(WeightsError, match="set model=iresnet18"):
            create_model(other, embedding_dim=32, input_size=32, weights=str(tmp_path / "b.pth"))
    compiled = {f"_orig_mod.{k}": v for k, v in insightface_state(DEPTHS["iresnet18"]).items()}
    torch.save(compiled, tmp_path / "c.pth")  # saved from a torch.compile'd model
    assert load_model(tmp_path / "c.pth").input_size == 32


def test_a_checkpoint_that_pickles_objects_needs_trust(tmp_path, monkeypatch):
    import argparse

    sd = adaface_state()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in sd.items()}}
    ckpt["hyper_parameters"] = argparse.Namespace(arch="ir_18")  # as Lightning may save it
    torch.save(ckpt, tmp_path / "ada.ckpt")
    with pytest.raises(ValueError, match="FACE_REC_TRUST_PICKLE=1"):
        load_model(tmp_path / "ada.ckpt")
    assert load_model(tmp_path / "ada.ckpt", trust_pickle=True).preprocessing.colour == "BGR"
    monkeypatch.setenv("FACE_REC_TRUST_PICKLE", "1")
    assert load_model(tmp_path / "ada.ckpt").input_size == 32
