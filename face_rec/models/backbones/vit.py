"""Vision Transformer for 112x112 faces, as insightface's arcface_torch (``backbones/vit.py``,
variants from its ``get_model``).

Architecture, top to bottom (checked against arcface_torch):

- patch embedding: a ``patch_size`` x ``patch_size`` conv with the same stride (bias on), so 112
  px and patch 9 give 12 x 12 = 144 tokens; the last 112 - 108 = 4 rows and columns are never
  seen (arcface_torch: ``img_size // patch_size``, the same conv). No class token.
- a learned position embedding (1, tokens, dim), N(0, 0.02).
- training only, ``mask_ratio`` > 0: each image keeps a random ``int(tokens x (1 - mask_ratio))``
  of its tokens through the transformer; after the final LayerNorm the dropped positions are
  filled with a learned mask token (normal std 0.02), so the neck always sees all tokens.
- ``depth`` pre-norm blocks: ``x + DropPath(MHSA(LN(x)))``, ``x + DropPath(MLP(LN(x)))``; MHSA
  with ``heads`` heads, a bias-free qkv projection and a biased output projection, scale
  ``head_dim ** -0.5``; MLP dim -> ``mlp_ratio`` x dim -> dim with **ReLU6** (arcface_torch's
  choice, not GELU); drop path rising linearly from 0 at the first block to ``drop_path`` at
  the last.
- final LayerNorm, then the feature neck: all tokens flattened (B, tokens x dim) ->
  Linear(tokens x dim, dim, no bias) -> BatchNorm1d(dim, eps 2e-5) -> Linear(dim,
  embedding_dim, no bias) -> BatchNorm1d(embedding_dim, eps 2e-5). (No reduction of the token
  width before flattening: the first Linear holds tokens x dim^2 weights, a third of vit_s.)
- init: Linear weights and the position embedding N(0, 0.02) (arcface_torch calls timm's
  ``trunc_normal_(std=0.02)``, whose default bounds are +-2 absolute, 100 std: the same
  distribution, drawn here without torch's slow truncation), biases 0, LayerNorm 1 / 0, the
  patch conv and BatchNorm at PyTorch's defaults.

arcface_torch's variants (all img_size 112, patch 9, mlp_ratio 4, LayerNorm, qkv without bias):

========  ====  =====  =====  =========  ==========  ================
name      dim   depth  heads  drop path  mask ratio  using_checkpoint
========  ====  =====  =====  =========  ==========  ================
vit_t     256   12     8      0.1        0.1         False
vit_s     512   12     8      0.1        0.1         False
vit_b     512   24     8      0.1        0.1         True
========  ====  =====  =====  =========  ==========  ================

(Its WebFace42M variants ``vit_t_dp005_mask0``, ``vit_s_dp005_mask_0``, ``vit_b_dp005_mask_005``
differ only in drop path 0.05 and mask ratio 0 / 0 / 0.05: ``model.drop_path``,
``model.mask_ratio``; its WebFace42M ViT-T recipe, ``wf42m_pfc03_40epoch_8gpu_vit_t``, trains
``vit_t_dp005_mask0`` with AdamW, lr 1e-3, weight decay 0.1, CosFace m = 0.4, fp16.)
``checkpointing`` is face_rec's ``run_blocks`` per transformer block, arcface_torch's
``using_checkpoint``.

Differences: attention runs through ``F.scaled_dot_product_attention`` (the same arithmetic;
arcface_torch computes softmax(q k^T) v explicitly in fp32 under autocast), and the state dict
keys follow arcface_torch's names (``patch_embed.proj``, ``pos_embed``, ``blocks.N.attn.qkv``,
``feature.0`` ...), so its ViT weights have the same keys and shapes (not yet tried on a
published file; :mod:`face_rec.models.published` does not recognise them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from face_rec.models.blocks import run_blocks
from face_rec.models.registry import register_model


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random ``p`` of the samples
    and scale the rest by 1 / (1 - p). (B, ...) -> (B, ...)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention. (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # (B, N, 3 * dim) -> (3, B, heads, N, head_dim)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """dim -> hidden -> dim with ReLU6 between. (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block. (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens. (B, 3, S, S) -> (B, (S // patch)^2, dim)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FaceViT(nn.Module):
    """(B, 3, S, S) RGB in [-1, 1] -> (B, embedding_dim) embedding (before normalisation).

    Args:
        embedding_dim: output size. input_size: the side S the model is built for (the position
            embedding and the neck are sized for its (S // patch_size)^2 tokens).
        patch_size, dim, depth, heads, mlp_ratio: the transformer (module docstring).
        drop_path: stochastic depth rate of the last block (linear from 0 at the first).
        mask_ratio: fraction of the tokens dropped per image in training (0: none).
        checkpointing: in training, recompute each block's activations during backward
            instead of keeping them (:func:`face_rec.models.blocks.run_blocks`).
    """

    def __init__(
        self,
        embedding_dim: int = 512,
        input_size: int = 112,
        patch_size: int = 9,
        dim: int = 256,
        depth: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        mask_ratio: float = 0.1,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(input_size, patch_size, dim, heads, mask_ratio)
        self.input_size = input_size
        self.num_tokens = (input_size // patch_size) ** 2
        self.mask_ratio = mask_ratio
        self.checkpointing = checkpointing
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.feature = nn.Sequential(
            nn.Linear(self.num_tokens * dim, dim, bias=False),
            nn.BatchNorm1d(dim, eps=2e-5),
            nn.Linear(dim, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim, eps=2e-5),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.patch_embed(x) + self.pos_embed  # (B, N, dim)
        keep = None
        if self.training and self.mask_ratio > 0:
            keep = self._kept_tokens(x.shape[0], x.device)  # (B, n_keep)
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = self.norm(run_blocks(self.blocks, x, self.checkpointing))
        if keep is not None:
            x = self._unmask(x, keep)
        return self.feature(x.flatten(1))

    def _kept_tokens(self, batch: int, device: torch.device) -> torch.Tensor:
        """Indices (B, n_keep) of a random int(N x (1 - mask_ratio)) tokens per image."""
        n_keep = int(self.num_tokens * (1 - self.mask_ratio))
        noise = torch.rand(batch, self.num_tokens, device=device)
        return noise.argsort(dim=1)[:, :n_keep]

    def _unmask(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, n_keep, dim) kept tokens -> (B, N, dim): each back at its position, the mask
        token at the dropped ones."""
        b, _, d = x.shape
        full = self.mask_token.expand(b, self.num_tokens, d)
        return full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), x)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.input_size,) * 2:
            raise ValueError(
                f"FaceViT built for (B, 3, {self.input_size}, {self.input_size}) images got "
                f"{tuple(x.shape)}: its position embedding and neck are sized for "
                f"{self.num_tokens} tokens; resize the images to {self.input_size}x"
                f"{self.input_size} or build the model for their size (model.input_size)"
            )


def _check_sizes(input_size: int, patch_size: int, dim: int, heads: int, mask_ratio: float) -> None:
    if not 0 < patch_size <= input_size:
        raise ValueError(f"patch_size {patch_size} must be between 1 and input_size {input_size}")
    if dim % heads:
        raise ValueError(f"dim {dim} must be a multiple of heads {heads} (model.dim, model.heads)")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio {mask_ratio} must be in [0, 1) (0: no token masking)")


#: arcface_torch's settings shared by vit_t, vit_s and vit_b
_ARCFACE = {"patch_size": 9, "heads": 8, "mlp_ratio": 4.0, "drop_path": 0.1, "mask_ratio": 0.1}


@register_model
def vit_t(**kw) -> FaceViT:
    return FaceViT(**{**_ARCFACE, "dim": 256, "depth": 12, **kw})


@register_model
def vit_s(**kw) -> FaceViT:
    return FaceViT(**{**_ARCFACE, "dim": 512, "depth": 12, **kw})


@register_model
def vit_b(**kw) -> FaceViT:
    return FaceViT(**{**_ARCFACE, "dim": 512, "depth": 24, "checkpointing": True, **kw})
