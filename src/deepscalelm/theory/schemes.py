"""Initialisation and residual-scaling schemes: pure functions of a `ModelConfig`.

Each scheme returns a `Scheme`: the init variance of every weight (zero-mean normal; names per
`deepscalelm.theory.naming`), the (lambda, beta) of every residual merge ``x <- lam*x + beta*F``,
and fixed scales (``head_scale``). Nothing else: biases are 0 and LayerNorms start at gain 1, shift 0.

Schemes:

* ``dslm``  DeepScaleLM (the paper's DeepScaleLM scheme), generalised; see `dslm`.
* ``xavier`` the authors' baseline: Q,K,V 2/(d+d_head); O 1/d;
  FFN 2/(d+d_ff) (= 2/(5d) at d_ff = 4d; the gated MLP's up projection fc3 likewise); embeddings
  1/d; MLM dense 1/d; other heads
  2/(fan_in+fan_out); merges (1, 1).
* ``normal`` every weight N(0, std^2) (std = config.std, default 0.02); merges (1, 1).
* ``gpt2`` ``normal`` with the residual output projections (attention O, cross-attention O, FFN fc2)
  scaled by 1/sqrt(n_blocks), n_blocks = residual blocks of the stack (2 per layer; GPT-2's
  1/sqrt(2 * n_layer)); merges (1, 1).
* ``deepnet`` DeepNorm (Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers"), Post-LN
  only: x <- LN(alpha*x + F(x)), i.e. merges (alpha, 1); Xavier-normal init with gain beta_d on
  V, O, fc1, fc2 (and a gated MLP's fc3) and gain 1 on Q, K. Encoder-only (N layers): alpha=(2N)^(1/4),
  beta_d=(8N)^(-1/4); decoder-only (M layers): alpha=(2M)^(1/4), beta_d=(8M)^(-1/4); encoder-decoder:
  encoder alpha=0.81(N^4 M)^(1/16), beta_d=0.87(N^4 M)^(-1/16); decoder alpha=(3M)^(1/4),
  beta_d=(12M)^(-1/4). Embeddings 1/d.
* ``completep`` CompleteP (Dey et al. 2025), alpha = 1: merges (1, min(1, 4/N)), matrices 1/fan_in,
  unit-variance embeddings; see `completep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..config import ModelConfig
from .components import gelu_moments, silu_moments
from .naming import has_type_table, layer_blocks, merge_names, n_embedding_tables, weight_shapes

# E[GeLU(z)^2] for z ~ N(0, 1) (the paper's Table 1, GeLU): the forward gain of GeLU at unit input.
GELU_SECOND_MOMENT = 0.42522


@dataclass(frozen=True)
class Scheme:
    """Init variances of every weight, (lambda, beta) of every residual merge, fixed scales."""

    name: str
    weight_var: Mapping[str, float]
    merges: Mapping[str, tuple[float, float]]
    scales: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({"head_scale": 1.0}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_var", MappingProxyType(dict(self.weight_var)))
        object.__setattr__(self, "merges", MappingProxyType(dict(self.merges)))
        object.__setattr__(self, "scales", MappingProxyType(dict(self.scales)))
        for name, v in self.weight_var.items():
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"weight variance of {name} must be positive and finite, got {v!r}")

    def merge(self, name: str) -> tuple[float, float]:
        try:
            return self.merges[name]
        except KeyError:
            raise KeyError(f"scheme {self.name!r} has no merge {name!r}; merges look like "
                           f"{next(iter(self.merges), '<none>')!r}") from None

    def var(self, name: str) -> float:
        try:
            return self.weight_var[name]
        except KeyError:
            raise KeyError(f"scheme {self.name!r} has no weight {name!r}") from None


def _stack_of(name: str) -> str:
    for prefix in ("encoder.", "decoder."):
        if name.startswith(prefix):
            return prefix
    return ""


def _n_blocks(config: ModelConfig, stack: str) -> int:
    n = dict((s, n) for s, n, _ in config.stacks())[stack]
    return n * len(layer_blocks(config, stack))


def _unit_merges(config: ModelConfig) -> dict[str, tuple[float, float]]:
    return {m: (1.0, 1.0) for m in merge_names(config)}


# --------------------------------------------------------------------------------------- baselines
def normal(config: ModelConfig) -> Scheme:
    """Every weight N(0, std^2), merges (1, 1)."""
    s2 = config.std ** 2
    return Scheme("normal", {n: s2 for n in weight_shapes(config)}, _unit_merges(config))


def gpt2(config: ModelConfig) -> Scheme:
    """``normal`` plus 1/sqrt(n_blocks) on the residual output projections."""
    s2 = config.std ** 2
    wv = {}
    for n in weight_shapes(config):
        residual_out = n.endswith(".o.weight") or n.endswith(".fc2.weight")
        wv[n] = s2 / _n_blocks(config, _stack_of(n)) if residual_out else s2
    return Scheme("gpt2", wv, _unit_merges(config))


def _xavier(rows: int, cols: int) -> float:
    return 2.0 / (rows + cols)


def xavier(config: ModelConfig) -> Scheme:
    """The authors' "Xavier" baseline for the paper's figures (arXiv 2403.09635)."""
    d, dh = config.d_model, config.d_head
    wv = {}
    for n, (rows, cols) in weight_shapes(config).items():
        if n.endswith((".q.weight", ".k.weight", ".v.weight")):
            wv[n] = 2.0 / (d + dh)
        elif n.endswith(".o.weight") or n == "mlm_dense.weight":
            wv[n] = 1.0 / d
        elif "emb" in n or n == "cls_token":
            wv[n] = 1.0 / d
        else:  # fc1, fc2 (2/(d+d_ff)), heads
            wv[n] = _xavier(rows, cols)
    return Scheme("xavier", wv, _unit_merges(config))


def deepnet_constants(config: ModelConfig, stack: str) -> tuple[float, float]:
    """DeepNorm's (alpha, beta_d) for one stack (see module docstring)."""
    if config.arch == "encoder-decoder":
        n, m = config.n_layers, config.decoder_layers
        if stack == "encoder.":
            return 0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)
        return (3 * m) ** 0.25, (12 * m) ** -0.25
    n = config.n_layers
    return (2 * n) ** 0.25, (8 * n) ** -0.25


def deepnet(config: ModelConfig) -> Scheme:
    """DeepNorm (Post-LN): merges (alpha, 1), Xavier-normal with gain beta_d on V, O, FFN."""
    d = config.d_model
    wv, merges = {}, {}
    for n, (rows, cols) in weight_shapes(config).items():
        _, beta_d = deepnet_constants(config, _stack_of(n))
        if n.endswith((".v.weight", ".o.weight", ".fc1.weight", ".fc2.weight", ".fc3.weight")):
            wv[n] = beta_d ** 2 * _xavier(rows, cols)
        elif n.endswith((".q.weight", ".k.weight")):
            wv[n] = _xavier(rows, cols)
        elif "emb" in n or n == "cls_token" or n == "mlm_dense.weight":
            wv[n] = 1.0 / d
        else:
            wv[n] = _xavier(rows, cols)
    for m in merge_names(config):
        merges[m] = (deepnet_constants(config, _stack_of(m))[0], 1.0)
    return Scheme("deepnet", wv, merges)


# -------------------------------------------------------------------------------------------- DSLM
def dslm_beta2(config: ModelConfig, stack: str = "") -> float:
    """beta^2 = k / N^alpha, N = residual blocks of the stack (depth_unit "blocks") or its layers.

    With the defaults (k = 2, alpha = 1, "blocks") an encoder or decoder stack of N_L layers gets
    beta^2 = 1/N_L, the authors' 0.005 at 192 layers (DSLM's choice of λ and β). Raises ValueError when k/N^alpha > 1.
    """
    n_layers = dict((s, n) for s, n, _ in config.stacks())[stack]
    n = _n_blocks(config, stack) if config.depth_unit == "blocks" else n_layers
    beta2: float = config.k / n ** config.alpha
    if beta2 > 1.0:
        raise ValueError(f"k / N^alpha must be <= 1 for DSLM (beta^2 = k/N^alpha), got k={config.k}, "
                         f"N={n} ({config.depth_unit}), alpha={config.alpha}: lower k")
    return beta2


def embedding_corr(config: ModelConfig) -> float:
    """Token correlation of the summed embedding before dropout (the paper's Zipf embedding correlation), equal table
    variances.

    r0 = sum over tables of (var_table / var_total) * P(two positions share a row of that table):
    token table: `ModelConfig.token_repeat_prob`; learned positions: 0; token types: 1 (one segment);
    ViT patches: 0 (patch pixels are treated as independent). Only existing tables count
    (`n_embedding_tables`): without a position table (``position`` "rope" or "none") a decoder's
    r0 is the token repeat probability itself.
    """
    t = n_embedding_tables(config)
    if config.arch == "vit":
        return 0.0
    share = config.token_repeat_prob
    if has_type_table(config):
        share += 1.0
    return share / t


def dslm_ffn_variances(config: ModelConfig) -> dict[str, float]:
    """DSLM's FFN weight variances {"fc1": ..., "fc2": ...[, "fc3": ...]} for unit forward gain.

    The FFN reads a norm output (mean 0, variance 1, fixed norm per token), and its output after
    dropout must have variance 1 so that lam^2 + beta^2 = 1 keeps the stream at unit variance.

    * ReLU: var_F = d d_ff sigma_1^2 sigma_2^2 / (2(1-p)) = 1 with sigma_1^2 = sigma_2^2
      (= sqrt(2(1-p)/(d d_ff))); backward gain d d_ff sigma_1^2 sigma_2^2/(2(1-p)) = 1 as well.
    * GeLU, SiLU: pre-activation variance 1 (sigma_1^2 = 1/d) and sigma_2^2 = (1-p)/(E[act(z)^2] d_ff)
      with z ~ N(0, 1) (E[GeLU^2] = 0.42522, E[SiLU^2] = 0.35578). The backward gain is then
      E[act'^2]/E[act^2] (GeLU 1.072, SiLU 1.067): these activations are not homogeneous, and the
      forward gain is the one DSLM fixes (as the paper does for GeLU).
    * SwiGLU, GeGLU, out = W2(act(x W1) * (x W3)): with gate variance s_a^2 = d sigma_1^2, up
      variance s_b^2 = d sigma_3^2 and A = d_ff sigma_2^2/(1-p), the forward gain is
      A s_b^2 m2(s_a^2) (m2 = E[act(a)^2]) and the backward gain (gate path plus up path) is
      A s_b^2 (m2(s_a^2) + s_a^2 m2'(s_a^2)) (m2' = E[act'(a)^2]). Their ratio,
      1 + s_a^2 m2'(s_a^2)/m2(s_a^2), does not depend on sigma_2 or sigma_3 and stays between 2.00
      and 2.07 for SwiGLU and GeGLU over gate variances 0.01-100 (-> 2 at both ends): the
      block is a product of two linear maps of x, so no Gaussian initialisation gives it unit
      forward *and* unit backward gain. DSLM keeps the forward gain at 1 (the stream variance
      depends on it) with unit gate and up pre-activations, sigma_1^2 = sigma_3^2 = 1/d, and
      sigma_2^2 = (1-p)/(m2(1) d_ff); the block's backward gain is then 1 + m2'(1)/m2(1)
      (SwiGLU 2.067, GeGLU 2.072; plus O(1/d), `FFNBlock._reuse_var`), so each FFN merge multiplies the gradient
      variance by 1 + beta^2 (gain - 1), a depth-independent total of about exp(1.07 k/2) over a stack with
      depth_unit "blocks".
    """
    d, f, p = config.d_model, config.ffn_dim, config.dropout
    act = config.activation
    if act == "relu":
        w = math.sqrt(2 * (1 - p) / (d * f))
        return {"fc1": w, "fc2": w}
    if act == "gelu":
        m2 = GELU_SECOND_MOMENT   # the rounded constant of the original scheme (pinned numbers)
    else:
        mean, var = (gelu_moments if act == "geglu" else silu_moments)(1.0)
        m2 = var + mean * mean
    out = {"fc1": 1.0 / d, "fc2": (1 - p) / (m2 * f)}
    if config.gated:
        out["fc3"] = 1.0 / d
    return out


def dslm(config: ModelConfig) -> Scheme:
    """DeepScaleLM (the paper's DeepScaleLM scheme): unit forward and backward moments at every layer.

    * each of the T summed embedding tables: (1-p_emb)/T, so the embedding after dropout has var 1
      (ViT patch projection: (1-p_emb)/(T*fan_in) for unit-variance pixels);
    * Q, K: 1/d (logit variance 1 at unit input);
    * V, O of layer l: equal variances with d^2 sigma_V^2 sigma_O^2 chosen so the attention block's
      output variance, after dropout, is 1 (see `deepscalelm.theory.dslm_schedule`);
      cross-attention uses the encoder output's correlation;
    * FFN: see `dslm_ffn_variances` (ReLU: sigma_1^2 = sigma_2^2 = sqrt(2(1-p)/(d d_ff)); GeLU, SiLU:
      sigma_1^2 = 1/d, sigma_2^2 = (1-p)/(E[act^2] d_ff); SwiGLU, GeGLU: gate and up 1/d, down
      (1-p)/(E[act^2] d_ff));
    * merges: lam^2 = 1 - beta^2, beta^2 = `dslm_beta2`;
    * tied LM head: ``head_scale`` = 1/sqrt(d * sigma_tok^2) so logits have unit variance;
      MLM dense, untied and classifier heads: 1/fan_in.
    """
    from .dslm_schedule import attention_vo_variances  # local: needs the propagation engine

    d = config.d_model
    t = n_embedding_tables(config)
    emb_var = (1.0 - config.emb_p) / t
    wv: dict[str, float] = {}
    shapes = weight_shapes(config)
    ffn = dslm_ffn_variances(config)
    # the per-layer weights ({stack}layers.{i}.{block}.{w}.weight, see naming.weight_shapes), by
    # their {w}: the values the chain below gives them, computed once instead of per weight
    per_layer: dict[str, float | None] = {"q": 1.0 / d, "k": 1.0 / d, "v": None, "o": None, **ffn}
    for n, (_rows, cols) in shapes.items():
        if "layers." in n and n.endswith(".weight"):
            w = n[n.rfind(".", 0, -7) + 1:-7]
            if w in per_layer:
                value = per_layer[w]
                if value is not None:   # V and O: set below from the correlation schedule
                    wv[n] = value
                continue
        if n == "patch_emb.weight":
            wv[n] = emb_var / cols
        elif "emb" in n or n == "cls_token":
            wv[n] = emb_var
        elif n.endswith((".q.weight", ".k.weight")):
            wv[n] = 1.0 / d
        elif n.endswith((".v.weight", ".o.weight")):
            continue  # set below from the correlation schedule
        elif n.endswith((".fc1.weight", ".fc2.weight", ".fc3.weight")):
            wv[n] = ffn[n[n.rfind(".", 0, -7) + 1:-7]]
        else:  # heads read a unit-variance stream
            wv[n] = 1.0 / cols
    merges = {}
    per_stack = {}  # (lam, beta) of each stack, computed once (not once per merge)
    for m in merge_names(config):
        stack = _stack_of(m)
        if stack not in per_stack:
            b2 = dslm_beta2(config, stack)
            per_stack[stack] = (math.sqrt(1.0 - b2), math.sqrt(b2))
        merges[m] = per_stack[stack]
    forward: dict[str, tuple[Any, ...]] = {}
    vo = attention_vo_variances(config, wv, merges, forward)
    # vo lists the attention blocks in forward order, as `shapes` lists their weights: inserting
    # V then O per block gives the same order as a pass over `shapes` (without 5000 suffix tests)
    for block, s in vo.items():
        wv[block + ".v.weight"] = s
        wv[block + ".o.weight"] = s
    tied = config.tie_embeddings and config.arch != "vit"
    scales = {"head_scale": 1.0 / math.sqrt(d * emb_var) if tied else 1.0}
    scheme = Scheme("dslm", wv, merges, scales)
    if forward:
        # the exact schedule already ran the model's forward pass with these very weights:
        # `predict` reuses it (private, not part of the Scheme's contents)
        object.__setattr__(scheme, "_forward", (config, forward))
    return scheme


#: residual blocks of the reference depth of `completep` (a 2-layer decoder), where its multiplier is 1
COMPLETEP_BASE_BLOCKS = 4


def completep(config: ModelConfig) -> Scheme:
    """CompleteP (Dey et al., NeurIPS 2025, arXiv 2505.01618) with alpha = 1, as an initialisation.

    * merges (1, beta) with beta = min(1, N_0 / N): the branch multiplier 1/L of CompleteP, relative to
      the reference depth N_0 = `COMPLETEP_BASE_BLOCKS` residual blocks (N: the residual blocks of the
      stack), so a 2-layer model is the plain residual network;
    * every matrix of the blocks and every head 1/fan_in (unit-gain projections, the muP/CompleteP
      hidden init at the model's own width); embeddings (1-p_emb)/T, so the embedding has unit
      variance as in `dslm`; tied LM head scaled by 1/sqrt(d * sigma_tok^2) (unit-variance logits).

    Its learning-rate rule (hidden rates independent of depth for alpha = 1, Adam eps scaled by the
    branch multiplier) is the ``"completep"`` parametrisation of `deepscalelm.optim.param_groups`.
    """
    t = n_embedding_tables(config)
    emb_var = (1.0 - config.emb_p) / t
    wv: dict[str, float] = {}
    for n, (_rows, cols) in weight_shapes(config).items():
        if n == "patch_emb.weight":
            wv[n] = emb_var / cols
        elif "emb" in n or n == "cls_token":
            wv[n] = emb_var
        else:
            wv[n] = 1.0 / cols
    merges = {m: (1.0, min(1.0, COMPLETEP_BASE_BLOCKS / _n_blocks(config, _stack_of(m))))
              for m in merge_names(config)}
    tied = config.tie_embeddings and config.arch != "vit"
    scales = {"head_scale": 1.0 / math.sqrt(config.d_model * emb_var) if tied else 1.0}
    return Scheme("completep", wv, merges, scales)


SCHEME_FUNCTIONS: dict[str, Callable[[ModelConfig], Scheme]] = {
    "dslm": dslm, "xavier": xavier, "normal": normal, "gpt2": gpt2, "deepnet": deepnet, "completep": completep,
}


def get_scheme(config: ModelConfig, name: str | None = None) -> Scheme:
    """The scheme ``name`` (default: ``config.scheme``) evaluated on ``config``."""
    name = config.scheme if name is None else name
    if name not in SCHEME_FUNCTIONS:
        raise ValueError(f"scheme must be one of {', '.join(sorted(SCHEME_FUNCTIONS))}, got {name!r}")
    return SCHEME_FUNCTIONS[name](config)


__all__ = ["Scheme", "get_scheme", "dslm", "dslm_ffn_variances", "xavier", "normal", "gpt2", "deepnet", "completep",
           "dslm_beta2",
           "embedding_corr", "deepnet_constants", "SCHEME_FUNCTIONS", "GELU_SECOND_MOMENT"]
