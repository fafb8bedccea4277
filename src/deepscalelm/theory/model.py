"""Whole-model moment propagation (the paper's model-level analysis): `predict(config) -> Trajectory`.

The engine walks the residual stream forward, block by block, with the block maps of
`deepscalelm.theory.blocks`, then walks the gradient back from a unit-variance, uncorrelated seed at
the model's final hidden state. Pre-LN: ``x <- lam*x + beta*F(LN(x))`` and a final LayerNorm;
Post-LN: ``x <- LN(lam*x + beta*F(x))`` (no extra final norm). Encoder-decoders run the encoder, use
its output as the key/value stream of every decoder cross-attention, and send the sum of the
cross-attention key/value gradients back into the encoder.

Modelling assumptions beyond the components': block outputs are uncorrelated with the stream they
are added to (true at initialisation for zero-mean weights). Bidirectional stacks are exchangeable
over positions, so one variance and one correlation describe every stream point. Causal stacks are
not: their backward pass (`deepscalelm.theory.positional.causal_backward`) carries the L x L token
covariance of the gradient and of the forward stream, and the records pool it (variance = mean over
positions, corr = mean off-diagonal covariance / variance; docs/causal_attention.md §8). The forward
records of causal stacks stay those of the pooled engine.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import numpy as np

from ..config import ModelConfig
from ..records import Record, Trajectory
from .attention import MC_CHECKED_LOGIT_VAR, VALID_LOGIT_VAR, LogitVarianceError, logit_var_note
from .blocks import AttentionBlock, FFNBlock, ResidualMerge, sum_grads, sum_signals
from .components import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from .moments import Grad, Signal, _grad, _signal
from .naming import layer_blocks
from .positional import causal_backward
from .schemes import Scheme, embedding_corr, get_scheme
from .softmax_quad import QUAD_FROM_VAR

# name of a block in a record (`cross` is the module name, `cross_attn` the record name)
_RECORD_BLOCK = {"attn": "attn", "cross": "cross_attn", "ffn": "ffn"}

VOResolver = Callable[[str, Signal, "Signal | None", bool], float]


class _UnitVOSchedule:
    """DSLM's exact V/O schedule as a `forward_stack` resolver, run inline by `forward_stack`.

    At each attention block, V = O = s with s = 1/sqrt(var_F(s=1)) (dslm_schedule.exact_schedule).
    `forward_stack` recognises this resolver and evaluates the attention head once: its moments
    divided by d_model * v_var (`Attention._forward_unscaled`) do not depend on V, so the unit block
    and the final block only scale them (the same operations as evaluating each block directly).
    Calling the object is the general resolver protocol, for other callers.
    """

    def __init__(self, config: ModelConfig, weight_var: Callable[[str], float]) -> None:
        self.config = config
        self.weight_var = weight_var
        self.chosen: dict[str, float] = {}

    def unit_block(self, name: str, block: str, causal: bool) -> AttentionBlock:
        c, wv = self.config, self.weight_var
        return _attention_block(c.d_model, c.n_heads, c.seq_len, wv(name + ".q.weight"),
                                wv(name + ".k.weight"), 1.0, 1.0, c.attn_dropout, c.dropout,
                                causal and block == "attn", c.kv_heads, c.qk_norm, *_rope_args(c, block))

    def choose(self, name: str, var1: float) -> float:
        s = 1.0 / var1 ** 0.5 if var1 > 0 else 1.0 / self.config.d_model
        self.chosen[name] = s
        return s

    def __call__(self, name: str, h: Signal, kv: Signal | None, causal: bool) -> float:
        unit = self.unit_block(name, name.rsplit(".", 1)[1], causal)
        return self.choose(name, unit.forward(h, kv).var)


@dataclass(slots=True)
class _Step:
    """Forward state of one residual merge."""

    name: str          # module name of the block, e.g. "layers.3.ffn"
    layer: int         # 1-based layer index
    block: str         # "attn" | "cross" | "ffn"
    comp: FFNBlock | AttentionBlock
    merge: ResidualMerge
    x: Signal          # stream before the merge
    h: Signal          # block input (LN(x) for Pre-LN, x for Post-LN)
    f: Signal          # block output after its dropout
    z: Signal          # lam*x + beta*F (before the Post-LN LayerNorm)
    y: Signal          # stream after the merge
    kv: Signal | None  # key/value stream of a cross-attention
    trace: tuple[Any, ...] | None = None  # the block's forward intermediates (`_trace`), reused by the backward pass


def embedding_signal(config: ModelConfig, scheme: Scheme, stack: str) -> Signal:
    """Moments of the embedding output after embedding dropout (the paper's Zipf embedding correlation).

    Token table: correlation = P(two positions share a token) (`ModelConfig.token_repeat_prob`);
    learned positions: 0 (no table for ``position`` "rope" or "none"); token types (one segment): 1.
    ViT: patch projection of unit-variance, uncorrelated pixels plus the class token (weight 1/L of
    the positions). ``config.r0``, when set, replaces the computed correlation of the sum.
    """
    learned = config.position == "learned"
    wv = scheme.weight_var
    if config.arch == "vit":
        c = config.channels * config.patch_size ** 2
        patch = Linear(c, config.d_model, wv["patch_emb.weight"]).forward(Signal(0.0, 1.0, 0.0))
        n = config.seq_len
        tok = Signal(0.0, ((n - 1) * patch.var + wv["cls_token"]) / n, 0.0)
        parts = [tok] + ([Signal(0.0, wv["pos_emb.weight"], 0.0)] if learned else [])
    else:
        parts = [Embedding(config.vocab_size, wv[f"{stack}tok_emb.weight"],
                           config.token_repeat_prob, config.seq_len).forward()]
        if f"{stack}pos_emb.weight" in wv:  # learned positions (rotary ones add no table)
            parts.append(Signal(0.0, wv[f"{stack}pos_emb.weight"], 0.0))
        if f"{stack}type_emb.weight" in wv:
            parts.append(Signal(0.0, wv[f"{stack}type_emb.weight"], 1.0))
    total = sum_signals(parts)
    if config.r0 is not None:
        total = Signal(total.mean, total.var, config.r0)
    return Dropout(config.emb_p).forward(total)


@lru_cache(maxsize=4096)
def _ffn_block(*args: Any) -> FFNBlock:
    return FFNBlock(*args)


def norm_of(config: ModelConfig) -> LayerNorm | RMSNorm:
    """The norm component of every norm of the model (``config.norm_type``)."""
    return RMSNorm(config.d_model) if config.norm_type == "rmsnorm" else LayerNorm(config.d_model)


def _norm_bwd(norm: LayerNorm | RMSNorm) -> Callable[[Signal, float, float], tuple[float, float]]:
    """The norm's float-level backward as f(input moments, grad var, grad corr)."""
    if isinstance(norm, RMSNorm):
        return lambda x, gv, gc: norm._bwd(x.mean, x.var, x.corr, gv, gc)
    bwd = norm._bwd
    return lambda x, gv, gc: bwd(x.var, gv, gc)


def _rope_args(config: ModelConfig, block: str) -> tuple[bool, float]:
    """(rope, rope_base) of an attention block: rotary positions act in self-attention only (the
    models leave cross-attention unrotated)."""
    return config.position == "rope" and block == "attn", float(config.rope_base)


def check_covered(config: ModelConfig) -> None:
    """Raise ValueError naming the first field of ``config`` whose setting the theory does not model.

    Rotary positions change the attention moments; until their formulas exist `predict` refuses
    them instead of silently treating them as the default. Grouped-query attention (``n_kv_heads``),
    QK-norm (``qk_norm``) and ``position="none"`` are covered.
    """
    if config.position == "rope" and config.qk_norm is not None:
        raise ValueError(f"qk_norm={config.qk_norm!r} together with position='rope' is not covered by the theory "
                         "yet (each is covered alone)")


@lru_cache(maxsize=4096)
def _attention_block(d_model: int, n_heads: int, seq_len: int, q_var: float, k_var: float,
                     v_var: float, o_var: float, attn_dropout: float, dropout: float,
                     causal: bool, n_kv_heads: int | None = None, qk_norm: str | None = None,
                     rope: bool = False, rope_base: float = 10000.0) -> AttentionBlock:
    # positional arguments only: a cheaper cache key than keywords
    return AttentionBlock(d_model, n_heads, seq_len, q_var, k_var, v_var, o_var,
                          attn_dropout=attn_dropout, dropout=dropout, causal=causal,
                          n_kv_heads=n_kv_heads, qk_norm=qk_norm, rope=rope, rope_base=rope_base)


def post_ln_forward(ln: LayerNorm, z: Signal, share: float) -> Signal:
    """LayerNorm of a merge whose input has a fluctuating norm only in a ``share`` of its variance."""
    full = ln.forward(z)
    if share >= 1.0:
        return full
    r = z.corr
    return _signal(full.mean, full.var, r + share * (full.corr - r))


@lru_cache(maxsize=16384)
def block_forward(comp: FFNBlock | AttentionBlock, h: Signal, kv: Signal | None = None) -> Signal:
    """``comp.forward`` memoised: the DSLM schedule and the prediction evaluate the same blocks on
    the same inputs (blocks and signals are immutable, so the cache is exact)."""
    return cast(AttentionBlock, comp).forward(h, kv) if kv is not None else comp.forward(h)


def _make_block(config: ModelConfig, wv: Callable[[str], float], name: str, block: str,
                causal: bool) -> FFNBlock | AttentionBlock:
    """The block map of one residual block. Blocks are immutable, so identical ones (every FFN of a
    DSLM model, every block of a baseline) are built once and shared (`functools.lru_cache`)."""
    if block == "ffn":
        if config.gated:
            return _ffn_block(config.d_model, config.ffn_dim, wv(name + ".fc1.weight"),
                              wv(name + ".fc2.weight"), config.activation, config.dropout,
                              wv(name + ".fc3.weight"))
        return _ffn_block(config.d_model, config.ffn_dim, wv(name + ".fc1.weight"),
                          wv(name + ".fc2.weight"), config.activation, config.dropout)
    return _attention_block(config.d_model, config.n_heads, config.seq_len, wv(name + ".q.weight"),
                            wv(name + ".k.weight"), wv(name + ".v.weight"), wv(name + ".o.weight"),
                            config.attn_dropout, config.dropout, causal and block == "attn",
                            config.kv_heads, config.qk_norm, *_rope_args(config, block))


def forward_stack(config: ModelConfig, weight_var: Callable[[str], float],
                  merges: Callable[[str], tuple[float, float]], stack: str, x: Signal,
                  memory: Signal | None = None, vo_resolver: VOResolver | None = None,
                  ) -> tuple[list[_Step], Signal]:
    """Propagate the stream of one stack forward; return its steps and its output.

    ``vo_resolver(name, h, kv, o_var_unit)``, when given, chooses the V (= O) variance of each
    attention block from the moments of its actual input (DSLM's exact schedule).
    """
    n_layers, causal = {s: (n, c) for s, n, c in config.stacks()}[stack]
    ln = norm_of(config)
    ln_forward, ln_corr = ln.forward, ln._corr
    gated = config.gated
    pre = config.norm == "pre"
    blocks = layer_blocks(config, stack)
    steps: list[_Step] = []
    merge_of: dict[tuple[float, float], ResidualMerge] = {}  # merges are shared (immutable)
    d, n_heads, seq_len, p, attn_p = (config.d_model, config.n_heads, config.seq_len,
                                      config.dropout, config.attn_dropout)
    unit_vo = vo_resolver if isinstance(vo_resolver, _UnitVOSchedule) else None
    d_ff, act = config.ffn_dim, config.activation
    ffn_of: dict[tuple[float, ...], FFNBlock] = {}
    unit_of: dict[tuple[float, float, str], AttentionBlock] = {}
    normalised = False  # Post-LN: is the stream already a LayerNorm output?
    for i in range(n_layers):
        for block in blocks:
            name = f"{stack}layers.{i}.{block}"
            h = ln_forward(x) if pre else x
            kv = memory if block == "cross" else None
            comp: FFNBlock | AttentionBlock
            if unit_vo is not None and block != "ffn":
                # the unit-V/O block depends on the name only through the Q and K variances
                key = (unit_vo.weight_var(name + ".q.weight"),
                       unit_vo.weight_var(name + ".k.weight"), block)
                unit = unit_of.get(key)
                if unit is None:
                    unit = unit_of[key] = unit_vo.unit_block(name, block, causal)
                raw = unit._head._forward_ctx(h, kv)
                var1 = unit._unit_output_var(raw)
                s = 1.0 / var1 ** 0.5 if var1 > 0 else 1.0 / d   # vo_resolver.choose, inlined
                unit_vo.chosen[name] = s
                comp = unit._with_vo(s, s)
                f, trace = comp._trace_raw(raw)
            elif vo_resolver is not None and block != "ffn":
                s = vo_resolver(name, h, kv, causal and block == "attn")
                # the block with V = O = s: the unit-V/O block with those two variances replaced
                comp = _attention_block(d, n_heads, seq_len, weight_var(name + ".q.weight"),
                                        weight_var(name + ".k.weight"), 1.0, 1.0, attn_p, p,
                                        causal and block == "attn", config.kv_heads, config.qk_norm,
                                        *_rope_args(config, block))._with_vo(s, s)
                f, trace = comp._trace(h, kv)
            elif block == "ffn":
                # the FFN map depends on the name only through its two weight variances
                w12: tuple[float, ...] = (weight_var(name + ".fc1.weight"), weight_var(name + ".fc2.weight"))
                if gated:
                    w12 += (weight_var(name + ".fc3.weight"),)
                ffn = ffn_of.get(w12)
                if ffn is None:
                    ffn = ffn_of[w12] = _ffn_block(d, d_ff, w12[0], w12[1], act, p, *w12[2:])
                comp = ffn
                f, trace = ffn._trace(h)
            else:
                comp = _make_block(config, weight_var, name, block, causal)
                f, trace = cast(AttentionBlock, comp)._trace(h, kv)
            lam_beta = merges(name)
            merge = merge_of.get(lam_beta)
            if merge is None:
                merge = merge_of[lam_beta] = ResidualMerge(*lam_beta)
            z = merge.forward(x, f)
            if pre:
                y = z
            else:
                # LayerNorm lowers the token correlation through the random per-token norms of its
                # input (LayerNorm.forward). A Post-LN stream is already normalised: only the share
                # of variance the merge adds (beta^2 var_F) has a fluctuating norm, so only that
                # share of the correction applies; otherwise it would compound over every merge.
                share = merge.beta ** 2 * f.var / z.var if (normalised and z.var > 0) else 1.0
                full = ln_corr(z.corr)   # post_ln_forward: LayerNorm output mean 0, variance 1
                y = _signal(0.0, 1.0, full if share >= 1.0 else z.corr + share * (full - z.corr))
                normalised = True
            steps.append(_Step(name, i + 1, block, comp, merge, x, h, f, z, y, kv, trace))
            x = y
    return steps, x


def backward_stack(config: ModelConfig, steps: list[_Step], g: Grad
                   ) -> tuple[list[Grad], Grad, list[Grad]]:
    """Walk the gradient back through one stack.

    ``g`` is the gradient at the stack's last stream point. Returns the gradient at the stream point
    after each step (in forward order), the gradient at the stack input (the embedding output), and
    the key/value gradients of the cross-attentions (to be summed into the encoder output).
    """
    ln = norm_of(config)
    ln_backward, ln_bwd = ln.backward, _norm_bwd(ln)
    pre = config.norm == "pre"
    after: list[Grad] = [g] * len(steps)
    kv_grads: list[Grad] = []
    for k in range(len(steps) - 1, -1, -1):
        st = steps[k]
        after[k] = g
        g_z = g if pre else ln_backward(st.z, g)
        comp = st.comp
        # the block's, the LayerNorm's and the merge's backward, chained as (var, corr) floats
        if st.kv is not None:
            attn = cast(AttentionBlock, comp)   # only attention blocks have a key/value stream
            gbv, gbc = attn._backward_f(st.h, st.trace, g_z.var, g_z.corr, st.kv)
            gkv = attn.backward_kv(st.h, g_z, st.kv, st.trace)
            kv_grads.append(_grad(st.merge.beta ** 2 * gkv.var, gkv.corr))
        else:
            gbv, gbc = comp._backward_f(st.h, st.trace, g_z.var, g_z.corr)
        if pre:
            gbv, gbc = ln_bwd(st.x, gbv, gbc)
        g = st.merge._backward_f(g_z, gbv, gbc)
    return after, g, kv_grads


def _records(stack_label: str, steps: list[_Step], grads: list[Grad], emb: Signal,
             g_emb: Grad, invalid: AbstractSet[str] = frozenset()) -> list[Record]:
    recs = [Record(stack_label, 0, "embedding", emb.mean, emb.var, emb.corr, g_emb.var, g_emb.corr,
                   valid=True)]
    new, append = object.__new__, recs.append
    for st, g in zip(steps, grads, strict=True):
        # Record(...) without the frozen dataclass's per-field object.__setattr__ (same fields)
        y, f = st.y, st.f
        r = new(Record)
        r.__dict__.update(stack=stack_label, layer=st.layer, block=_RECORD_BLOCK[st.block],
                          mean=y.mean, var=y.var, corr=y.corr, grad_var=g.var, grad_corr=g.corr,
                          block_var=f.var, block_corr=f.corr, valid=st.name not in invalid)
        append(r)
    return recs


def _validity(fwd: list[tuple[str, Signal, list[_Step], Signal, Signal]]) -> tuple[set[str], list[str], float]:
    """Names of the attention steps whose effective logit variance is outside the validated range
    (`attention.logit_var_note`), one summary line per (stack, block type) with such steps, and the
    largest logit variance seen."""
    invalid: set[str] = set()
    worst: dict[tuple[str, str], list[float]] = {}
    v_max = 0.0
    for stack, _emb, steps, _out, _final in fwd:
        for st in steps:
            if st.block == "ffn":
                continue
            v = cast(AttentionBlock, st.comp)._head.logit_var(st.h, st.kv)
            v_max = max(v_max, v)
            if logit_var_note(v) is None:
                continue
            invalid.add(st.name)
            w = worst.setdefault((stack.rstrip("."), _RECORD_BLOCK[st.block]), [v, st.layer, st.layer, 0])
            w[0] = max(w[0], v)
            w[1], w[2], w[3] = min(w[1], st.layer), max(w[2], st.layer), w[3] + 1
    lines = []
    for (stack, block), (v, lo, hi, count) in worst.items():
        where = f"{stack + ' ' if stack else ''}{block}, {count} block{'s' if count > 1 else ''} in layers {lo}-{hi}"
        lines.append(f"attention logit variance (1-r) sigma_s^2 up to {v:.3g}, outside the validated range "
                     f"of the softmax/attention moments ({VALID_LOGIT_VAR:g} or less, or "
                     f"{QUAD_FROM_VAR:g} to {MC_CHECKED_LOGIT_VAR:g}) at {where}: {logit_var_note(v)}")
    return invalid, lines, v_max


# n_layers * seq_len^2 up to which predict() resolves positions in causal stacks by default
POSITIONAL_BUDGET = 2_500_000


def predict(config: ModelConfig, scheme: Scheme | str | None = None,
            seed: Grad = Grad(1.0, 0.0), *, positional: bool | None = None) -> Trajectory:
    """Predicted moments of every sublayer of the model described by ``config``.

    ``scheme``: a `Scheme`, a scheme name, or None for ``config.scheme``. ``seed``: the gradient at
    the model's final hidden state (default: unit variance, uncorrelated; the paper's protocol).
    Returns a `Trajectory` with records in forward order (encoder stack first); see
    `deepscalelm.records` for the fields.

    ``positional``: True makes causal stacks carry the gradient's per-position variance and token
    covariance through the backward pass (`deepscalelm.theory.positional`; much closer to
    measurement for causal Post-LN baselines, cost O(n_layers * L^2)); False gives the pooled
    backward pass (cost O(n_layers)); None (default) chooses positional when
    n_layers * seq_len^2 <= `POSITIONAL_BUDGET` (about half a second), pooled beyond.
    ``trajectory.meta["backward"]`` records which one ran. Both include rotary positions
    (``config.position == "rope"``, docs/rope.md).
    """
    # The engine allocates ~10^5 short-lived, acyclic records per 1000 layers. With the cyclic
    # garbage collector running, that triggers ~150 collections, some of them full scans of the
    # whole heap (whose cost depends on everything else the process holds: 5-20 ms at 1000
    # layers). Nothing here creates reference cycles, so the collector is paused for the call and
    # restored afterwards (also on errors; left off if the caller had turned it off).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _predict(config, scheme, seed, positional)
    except LogitVarianceError as e:
        raise LogitVarianceError(f"predict ({_describe(config)}): {e}") from None
    finally:
        if was_enabled:
            gc.enable()


def _describe(config: ModelConfig) -> str:
    return (f"arch={config.arch}, norm={config.norm}, scheme={config.scheme}, d_model={config.d_model}, "
            f"n_heads={config.n_heads}, n_layers={config.n_layers}")


def _backward(config: ModelConfig, label: str, run: Callable[[], tuple[Any, ...]], v_max: float) -> tuple[Any, ...]:
    """Run one stack's backward pass; a non-finite gradient moment (float overflow) becomes a
    ValueError that names the stack, the config and the largest attention logit variance."""
    try:
        out = run()
    except (ValueError, OverflowError, FloatingPointError) as e:
        if "finite" not in str(e) and not isinstance(e, (OverflowError, FloatingPointError)):
            raise
        out = None
    if out is None or not all(math.isfinite(g.var) for g in out[0] + [out[1]]):
        raise ValueError(
            f"predict ({_describe(config)}): the gradient variance of the {label or 'model'} stack "
            f"overflows float64 (it grows without bound towards the input); the largest attention "
            f"logit variance (1-r) sigma_s^2 is {v_max:.3g} (validated up to {VALID_LOGIT_VAR:g}): "
            "lower the Q/K weight variances or the depth") from None
    return out


def _predict(config: ModelConfig, scheme: Scheme | str | None, seed: Grad,
             positional: bool | None) -> Trajectory:
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    check_covered(config)
    if scheme is None or isinstance(scheme, str):
        scheme = get_scheme(config, scheme)
    wv, mg = scheme.weight_var.__getitem__, scheme.merge
    ln = norm_of(config)
    pre = config.norm == "pre"
    stacks = config.stacks()
    fwd = []
    memory = None
    cached = getattr(scheme, "_forward", None)
    cached = cached[1] if cached is not None and cached[0] == config else None
    for stack, _n, _c in stacks:
        if cached is not None:  # DSLM's exact schedule ran this forward pass already
            emb, steps, out = cached[stack]
        else:
            emb = embedding_signal(config, scheme, stack)
            steps, out = forward_stack(config, wv, mg, stack, emb, memory)
        final = ln.forward(out) if pre else out
        fwd.append((stack, emb, steps, out, final))
        memory = final

    invalid, warnings, v_max = _validity(fwd)
    if positional is None:
        positional = max(n for _s, n, _c in stacks) * config.seq_len ** 2 <= POSITIONAL_BUDGET
    records: list[Record] = []
    g_top = seed
    per_stack: list[list[Record]] = []
    for stack, emb, steps, out, final in reversed(fwd):
        label = stack.rstrip(".")
        causal = {s: c for s, _n, c in stacks}[stack]
        if causal and positional:
            # causal stacks: position-resolved gradient covariance (theory/positional.py)
            def run(steps: list[_Step] = steps, g_top: Grad = g_top, emb: Signal = emb) -> tuple[Any, ...]:
                with np.errstate(over="ignore", invalid="ignore"):
                    return cast(tuple[Any, ...], causal_backward(config, steps, g_top, emb))
        else:
            # mypy [misc]: the two variants bind different defaults (emb / out) on purpose
            def run(steps: list[_Step] = steps, g_top: Grad = g_top,  # type: ignore[misc]
                    out: Signal = out) -> tuple[Any, ...]:
                return backward_stack(config, steps, ln.backward(out, g_top) if pre else g_top)
        grads, g_emb, kv_grads = _backward(config, label, run, v_max)
        recs = _records(label, steps, grads, emb, g_emb, invalid)
        if pre:
            n_layers = {s: n for s, n, _ in stacks}[stack]
            recs.append(Record(label, n_layers, "final_norm", final.mean, final.var, final.corr,
                               g_top.var, g_top.corr, valid=True))
        per_stack.append(recs)
        g_top = sum_grads(kv_grads) if kv_grads else Grad(0.0, 0.0)
    for recs in reversed(per_stack):
        records += recs
    meta = {"config": config.to_dict(), "scheme": scheme.name, "seed_grad_var": seed.var,
            "seed_grad_corr": seed.corr, "r0": embedding_corr(config),
            "backward": "positional" if positional and any(c for _s, _n, c in stacks) else "pooled",
            "warnings": warnings, "max_logit_var": v_max}
    return Trajectory(records, "predicted", meta)


__all__ = ["predict", "POSITIONAL_BUDGET", "embedding_signal", "forward_stack", "backward_stack", "norm_of",
           "check_covered"]
