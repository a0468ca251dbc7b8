"""ViT backbones (arcface_torch's vit_t / vit_s / vit_b): sizes by hand, shapes, token masking,
attention against a per-head loop, input checks, configs, and train.py model=vit_t."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from face_rec.models.backbones.vit import Attention, DropPath, FaceViT
from face_rec.models.registry import create_model, list_models
from face_rec.models.summary import count_params, forward_flops
from face_rec.utils.checkpoint import model_from_checkpoint

from ..conftest import REPO, tiny_args

# arcface_torch get_model: (dim, depth); all patch 9, 8 heads, MLP ratio 4, 512-d embedding
VARIANTS = {"vit_t": (256, 12), "vit_s": (512, 12), "vit_b": (512, 24)}


def reference_params(dim: int, depth: int, tokens: int = 144, patch: int = 9, emb: int = 512):
    """Parameters of arcface_torch's VisionTransformer, layer by layer."""
    patch_embed = 3 * patch * patch * dim + dim  # conv with bias
    block = (
        2 * dim  # norm1
        + dim * 3 * dim  # qkv, no bias
        + (dim * dim + dim)  # proj
        + 2 * dim  # norm2
        + (dim * 4 * dim + 4 * dim)  # fc1
        + (4 * dim * dim + dim)  # fc2
    )
    neck = tokens * dim * dim + 2 * dim + dim * emb + 2 * emb  # Linear, BN, Linear, BN
    return patch_embed + tokens * dim + depth * block + 2 * dim + dim + neck  # pos, norm, mask


def reference_flops(dim: int, depth: int, tokens: int = 144, patch: int = 9, emb: int = 512):
    """2 x multiply-adds of one image: patch conv, per block the four linears and attention's
    two matrix products (q k^T and attention x v), the neck's two linears."""
    macs = tokens * 3 * patch * patch * dim
    macs += depth * (tokens * 12 * dim * dim + 2 * tokens * tokens * dim)
    macs += tokens * dim * dim + dim * emb
    return 2 * macs


def test_the_three_variants_are_registered():
    assert {"vit_t", "vit_s", "vit_b"} <= set(list_models())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_params_flops_and_tokens_match_arcface_torch(name):
    dim, depth = VARIANTS[name]
    model = create_model(name)
    assert model.num_tokens == 144 and model.pos_embed.shape == (1, 144, dim)
    assert len(model.blocks) == depth and model.blocks[0].attn.heads == 8
    assert count_params(model) == reference_params(dim, depth)
    assert forward_flops(model) == reference_flops(dim, depth)


@pytest.mark.parametrize(("name", "label"), [("vit_t", "1.5"), ("vit_b", "11")])
def test_published_gflops(name, label):
    """arcface_torch's result tables name them ViT-T-1.5G and ViT-B-11G (multiply-adds)."""
    macs = forward_flops(create_model(name)) / 2
    assert f"{macs / 1e9:.{label.count('.')}f}" == label


def test_patch_9_makes_144_tokens_of_9x9_pixels():
    """Row-major tokens; pixels 108-111 (past 12 x 9) are seen by none, as in arcface_torch."""
    model = create_model("vit_t").eval()
    empty = model.patch_embed(torch.zeros(1, 3, 112, 112))
    assert empty.shape == (1, 144, 256)

    def changed(rows: slice, cols: slice) -> list[int]:
        x = torch.zeros(1, 3, 112, 112)
        x[..., rows, cols] = 1.0
        return (model.patch_embed(x) - empty).abs().sum(-1)[0].nonzero().flatten().tolist()

    assert changed(slice(9, 18), slice(0, 9)) == [12]  # second row of patches, first column
    assert changed(slice(99, 108), slice(99, 108)) == [143]
    assert changed(slice(0, 112), slice(108, 112)) == []
    assert changed(slice(108, 112), slice(0, 112)) == []


@pytest.mark.parametrize("name", ["vit_t", "vit_s"])
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    out = model(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    assert model.mask_token.grad.abs().sum() > 0  # masked positions reach the neck


def test_vit_b_forward_on_one_image():
    model = create_model("vit_b").eval()
    assert model.checkpointing  # as arcface_torch's using_checkpoint=True
    with torch.no_grad():
        out = model(torch.rand(1, 3, 112, 112) * 2 - 1)
    assert out.shape == (1, 512) and torch.isfinite(out).all()


def test_attention_matches_a_per_head_loop():
    torch.manual_seed(0)
    dim, heads, n = 24, 3, 5
    attn = Attention(dim, heads)
    x = torch.randn(2, n, dim)
    qkv = attn.qkv(x)
    q, k, v = qkv[..., :dim], qkv[..., dim : 2 * dim], qkv[..., 2 * dim :]
    hd = dim // heads
    expected = torch.zeros(2, n, dim)
    for b in range(2):
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            for i in range(n):
                logits = torch.stack([q[b, i, cols] @ k[b, j, cols] for j in range(n)])
                w = torch.softmax(logits / math.sqrt(hd), dim=0)
                expected[b, i, cols] = sum(w[j] * v[b, j, cols] for j in range(n))
    expected = attn.proj(expected)
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_training_masks_tokens_and_puts_the_rest_back_in_place():
    """With no blocks, tokens are independent: in training the kept ones equal the eval tokens
    at the same positions, the others are the mask token, int(N * 0.1) of them per image."""
    torch.manual_seed(0)
    model = FaceViT(embedding_dim=8, input_size=36, patch_size=9, dim=16, depth=0, heads=2)
    seen = []
    model.feature.register_forward_pre_hook(lambda m, a: seen.append(a[0].view(3, 16, 16)))
    x = torch.rand(3, 3, 36, 36) * 2 - 1
    model.eval()(x)
    model.train()(x)
    full, masked = seen
    is_mask = (masked == model.mask_token.view(16)).all(-1)
    assert is_mask.sum(1).tolist() == [16 - int(16 * 0.9)] * 3
    assert len({tuple(row.tolist()) for row in is_mask}) > 1  # positions differ per image
    torch.testing.assert_close(masked[~is_mask], full[~is_mask])
    assert not (full == model.mask_token.view(16)).all(-1).any()


def test_mask_ratio_zero_trains_on_every_token():
    torch.manual_seed(0)
    model = FaceViT(embedding_dim=8, input_size=36, dim=16, depth=1, heads=2, mask_ratio=0.0)
    model.train()(torch.rand(2, 3, 36, 36)).sum().backward()
    assert model.mask_token.grad is None


def test_drop_path_rises_linearly_and_drops_whole_samples():
    model = create_model("vit_t", depth=5, drop_path=0.2)
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])
    torch.manual_seed(0)
    dp, x = DropPath(0.5).train(), torch.ones(2000, 4, 3)
    y = dp(x)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 2).all(1)).all()
    assert per_sample[:, 0].mean().item() == pytest.approx(1.0, abs=0.1)
    assert torch.equal(dp.eval()(x), x)


def test_images_of_another_size_are_refused_with_what_to_do():
    model = create_model("vit_t")
    with pytest.raises(ValueError, match=r"112, 112\) images got \(2, 3, 100, 100\).*"
                       r"resize the images to 112x112 or .*model.input_size"):  # fmt: skip
        model(torch.zeros(2, 3, 100, 100))
    small = create_model("vit_t", input_size=100, dim=32, depth=1)  # 11 x 11 tokens
    assert small.num_tokens == 121 and small.train()(torch.zeros(2, 3, 100, 100)).shape == (2, 512)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 100, "heads": 8}, "dim 100 must be a multiple of heads 8"),
        ({"input_size": 8}, "patch_size 9 must be between 1 and input_size 8"),
        ({"mask_ratio": 1.0}, r"mask_ratio 1.0 must be in \[0, 1\)"),
    ],
)
def test_bad_sizes_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("vit_t", **kwargs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_builds_arcface_torchs_variant(name):
    """conf/model/<name>.yaml and create_model(<name>) agree (sizes, masking, drop path)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose(
            "train",  # the default CPU preset shrinks input_size and embedding_dim: restore them
            overrides=[f"model={name}", "model.input_size=112", "model.embedding_dim=512"],
        )
    built, default = instantiate(cfg.model), create_model(name)
    assert count_params(built) == count_params(default) == reference_params(*VARIANTS[name])
    for attr in ("num_tokens", "mask_ratio", "checkpointing", "input_size"):
        assert getattr(built, attr) == getattr(default, attr), attr
    assert built.blocks[-1].drop_path.p == default.blocks[-1].drop_path.p == pytest.approx(0.1)


def test_train_py_trains_vit_t_from_the_command_line(tiny, tmp_path):
    args = [a for a in tiny_args(tiny) if not a.startswith(("model=", "trainer.max_steps="))]
    cmd = [sys.executable, "train.py", *args, "model=vit_t", "model.dim=32", "model.depth=2",
           "model.heads=4", "model.checkpointing=true", "trainer.max_steps=2",
           f"paths.log_dir={tmp_path}/logs", "run_name=vit"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "logs" / "train" / "runs" / "vit"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    rebuilt = model_from_checkpoint(run / "checkpoints" / "last.pt")  # as eval_lfw.py does
    rebuilt = getattr(rebuilt, "backbone", rebuilt)
    assert isinstance(rebuilt, FaceViT) and len(rebuilt.blocks) == 2 and rebuilt.num_tokens == 9
