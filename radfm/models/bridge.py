"""The vision-language bridge: a perceiver-style resampler from encoder tokens to LLM embeddings.

Why a resampler: the shared encoder returns ``N`` tokens for a volume, and ``N`` changes with
the volume's size (a 64-slice crop vs a 300-slice scan). ``Q`` learned queries cross-attend to
all of them (Flamingo's perceiver resampler / BLIP-2's Q-former without the text branch), so
the LLM always receives a fixed, short prefix of ``Q`` embeddings whatever the scan. The keys
carry each token's 3D position, normalised to the grid, so location words ("right lower lobe")
can be grounded on any volume size.

Read top to bottom: the position code, one resampler layer, the model.
Shapes: encoder tokens ``(B, N, Cv)`` (``N = P + gd*gh*gw`` with ``P`` prefix tokens such as a
class token), output ``(B, Q, H_llm)``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from radfm.errors import InputError
from radfm.models.pos_embed import sincos_pos_embed_1d
from radfm.models.radfm_config import RadFMBridgeConfig

__all__ = ["ResamplerLayer", "VolumeResampler", "normalized_grid_code"]


def normalized_grid_code(
    grid_size: tuple[int, int, int], dim: int, *, scale: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Sin-cos code of token positions normalised to ``[0, 1]`` per axis (cell centres).

    Why normalised (unlike the encoder's index-based code): the bridge must say *where in the
    body* a feature is, and the same anatomical place sits at different indices in a 48³ and
    a 96³ volume of the same field of view.

    Returns:
        ``(gd * gh * gw, dim)`` float32, z-major; channels split in three even parts for z, y, x,
        the remainder (``dim % 6``) zero.
    """
    per_axis = 2 * (dim // 6)
    axes = [(torch.arange(int(g), dtype=torch.float32, device=device) + 0.5) / int(g) * scale for g in grid_size]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    parts = [sincos_pos_embed_1d(per_axis, a.reshape(-1)) for a in (zz, yy, xx)]
    rest = dim - 3 * per_axis
    if rest:
        parts.append(torch.zeros(zz.numel(), rest, device=device))
    return torch.cat(parts, dim=1)


class ResamplerLayer(nn.Module):
    """Queries attend to [tokens; queries] (Flamingo), then a position-wise MLP; pre-LN, residual.

    ``queries (B, Q, h)``, ``context (B, N, h)`` (already normed), ``mask (B, N)`` bool or None
    -> ``(B, Q, h)``.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(hidden_size, eps=eps)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm_mlp = nn.LayerNorm(hidden_size, eps=eps)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, q_len, h = queries.shape
        heads, hd = self.num_heads, h // self.num_heads
        x = self.norm_q(queries)
        kv_in = torch.cat([context, x], dim=1)  # (B, N + Q, h): queries also see each other
        q = self.q(x).reshape(b, q_len, heads, hd).transpose(1, 2)
        k, v = self.kv(kv_in).reshape(b, kv_in.shape[1], 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None
        if mask is not None:
            full = torch.cat([mask, mask.new_ones(b, q_len)], dim=1)  # (B, N + Q)
            attn_mask = full[:, None, None, :]  # broadcast over heads and queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        queries = queries + self.proj(out.transpose(1, 2).reshape(b, q_len, h))
        return queries + self.fc2(F.gelu(self.fc1(self.norm_mlp(queries))))


class VolumeResampler(PreTrainedModel):
    """Encoder tokens (any count) -> ``num_queries`` LLM input embeddings.

    ``forward(features (B, N, Cv), grid_size=(gd, gh, gw) | None, attention_mask (B, N) | None)``
    -> ``(B, Q, H_llm)``. ``grid_size`` gives the tokens' 3D positions (the last
    ``gd*gh*gw`` tokens, z-major; earlier ones are prefix tokens without a position); ``None``
    adds no position. ``attention_mask`` (True = real token) lets a batch mix volumes of
    different token counts padded to one ``N``.
    """

    config_class = RadFMBridgeConfig
    base_model_prefix = "bridge"
    main_input_name = "features"
    _no_split_modules: ClassVar[list[str]] = ["ResamplerLayer"]

    def __init__(self, config: RadFMBridgeConfig) -> None:
        super().__init__(config)
        if config.vision_hidden_size is None or config.llm_hidden_size is None:
            raise InputError(
                "the bridge config has no vision_hidden_size / llm_hidden_size.",
                "Build it inside RadFMConfig (which fills them) or set both explicitly.",
            )
        h = config.hidden_size
        self.queries = nn.Parameter(torch.zeros(1, config.num_queries, h))
        self.in_proj = nn.Linear(config.vision_hidden_size, h)
        self.norm_in = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            ResamplerLayer(hidden_size=h, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                           eps=config.layer_norm_eps)
            for _ in range(config.num_layers)
        )
        self.norm_out = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.out_proj = nn.Linear(h, config.llm_hidden_size)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Small normal init (LLM embedding scale); goes through ``transformers.initialization``."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            # Inside the resampler, variance-preserving (1/sqrt(fan_in)): with 0.02 the attention
            # logits start near zero, every query mean-pools the volume, and the few tokens that
            # differ between volumes barely move the output. Only out_proj, which writes into
            # the LLM's embedding space, starts at the LLM's own scale.
            w = std if module is getattr(self, "out_proj", None) else module.weight.shape[1] ** -0.5
            init.normal_(module.weight, std=w)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VolumeResampler):
            # Small, like the other weights: the queries are LayerNorm'ed before attending, and in the
            # residual stream a unit-scale constant would drown the volume-dependent attention output
            # (the bridge would emit the same embeddings for every volume at the start of training).
            init.normal_(module.queries, std=std)

    def forward(
        self,
        features: torch.Tensor,
        grid_size: tuple[int, int, int] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if features.ndim != 3 or features.shape[-1] != self.config.vision_hidden_size:
            raise InputError(
                f"the bridge expects encoder tokens (B, N, {self.config.vision_hidden_size}), "
                f"got shape {tuple(features.shape)}."
            )
        b, n, _ = features.shape
        # Normalise the content *before* adding the position code: with the small init of
        # in_proj, content added to a unit-scale sin-cos code and normed afterwards is swamped by
        # the positions (every volume then looks alike to the queries and the bridge cannot learn).
        x = self.norm_in(self.in_proj(features.to(self.in_proj.weight.dtype)))  # (B, N, h), unit scale
        if grid_size is not None and self.config.use_positions:
            n_grid = int(grid_size[0]) * int(grid_size[1]) * int(grid_size[2])
            if n_grid > n:
                raise InputError(f"grid {tuple(grid_size)} has {n_grid} tokens but only {n} features were given.")
            pos = normalized_grid_code(tuple(grid_size), x.shape[-1], scale=float(self.config.position_scale),
                                       device=x.device).to(x.dtype)
            x = torch.cat([x[:, : n - n_grid], x[:, n - n_grid:] + pos], dim=1)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (b, n):
                raise InputError(f"attention_mask must be ({b}, {n}), got {tuple(attention_mask.shape)}.")
            attention_mask = attention_mask.to(device=x.device, dtype=torch.bool)
        context = x
        q = self.queries.expand(b, -1, -1).to(x.dtype)
        for layer in self.layers:
            q = layer(q, context, attention_mask)
        return self.out_proj(self.norm_out(q))  # (B, Q, H_llm)
