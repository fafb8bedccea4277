"""Block-level moments (blocks composed from the paper's Table 1): the FFN block, the multi-head attention block, the
residual merge.

A block maps the moments of its input (a LayerNorm output in Pre-LN, the normalised stream in
Post-LN) to the moments of its output F *after* its output dropout and before the residual scaling.
``backward(x, g)`` takes the block input's moments and the gradient at F and returns the gradient at
the block input. Blocks are compositions of `deepscalelm.theory.components`, so every assumption of
those components carries over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, cast

from .components import Attention, Dropout, GatedProduct, GeLU, Linear, ReLU, SiLU, _reuse_moments
from .moments import Grad, Signal, _grad, _signal, clip_corr

_FFN_ACTIVATIONS = ("relu", "gelu", "silu", "swiglu", "geglu")
_GATED = {"swiglu": "silu", "geglu": "gelu"}


@dataclass(frozen=True)
class FFNBlock:
    """The feed-forward block, ending in its output dropout.

    * ``activation`` relu, gelu, silu: Linear(d -> d_ff, w1_var) -> act -> Linear(d_ff -> d, w2_var)
      -> Dropout(p).
    * gated, swiglu (act = SiLU) or geglu (act = GeLU): out = W2(act(x W1) * (x W3)) -> Dropout(p),
      W1 the gate (variance ``w1_var``), W3 the up projection (``w3_var``, required), both
      d -> d_ff, W2 the down projection d_ff -> d. The gate and up pre-activations are zero-mean
      Gaussians with the same token correlation (one input) and independent (two weight matrices);
      `deepscalelm.theory.components.GatedProduct` gives the moments of their product, and the
      input gradient is the sum of the gate path W1 g_a and the up path W3 g_b (uncorrelated:
      independent weights), var_x = d_ff (w1_var var_ga + w3_var var_gb), covariances alike.

    Assumes an input of fixed norm per token (a norm output, as in every model): for a Gaussian
    input the gated product's variance would be higher by about 1 + 2/d (a and b share |x|).
    """

    d_model: int
    d_ff: int
    w1_var: float
    w2_var: float
    activation: str = "relu"
    dropout: float = 0.0
    w3_var: float | None = None
    _parts: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    _memo: dict[Signal, list[Signal]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in _FFN_ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_FFN_ACTIVATIONS)}, got {self.activation!r}")
        if self.gated:
            if self.w3_var is None:
                raise ValueError(f"w3_var (variance of the up projection W3) is required for the gated "
                                 f"activation {self.activation!r}")
            parts: tuple[Any, ...] = (Linear(self.d_model, self.d_ff, self.w1_var),
                                      GatedProduct(_GATED[self.activation]),
                                      Linear(self.d_model, self.d_ff, self.w3_var),
                                      Linear(self.d_ff, self.d_model, self.w2_var), Dropout(self.dropout))
        else:
            act = {"relu": ReLU, "gelu": GeLU, "silu": SiLU}[self.activation]()
            parts = (Linear(self.d_model, self.d_ff, self.w1_var), act,
                     Linear(self.d_ff, self.d_model, self.w2_var), Dropout(self.dropout))
        object.__setattr__(self, "_parts", parts)

    @property
    def gated(self) -> bool:
        """Whether the block is a gated MLP (three weight matrices)."""
        return self.activation in _GATED

    def _inputs(self, x: Signal) -> list[Signal]:
        """Moments at the input of each part (memoised per input: forward and backward share them)."""
        ins = self._memo.get(x)
        if ins is None:
            ins = [x]
            for part in self._parts[:-1]:
                ins.append(part.forward(ins[-1]))
            if len(self._memo) > 256:
                self._memo.clear()
            self._memo[x] = ins
        return ins

    def forward(self, x: Signal) -> Signal:
        if self.gated:
            return self._trace(x)[0]
        return cast(Signal, self._parts[-1].forward(self._inputs(x)[-1]))

    def backward(self, x: Signal, g: Grad) -> Grad:
        return self._backward_trace(x, None, g)

    def _trace(self, x: Signal, kv: None = None) -> tuple[Signal, tuple[Any, ...]]:
        """(output, (mean, var, corr) at the input of each part after the first).

        The parts are chained through their float-level forms (`Linear._fwd` etc.: the formulas
        of their forward methods, without a record per part). The whole-model engine keeps the
        trace with its step and hands it to `_backward_trace`: at 1000 layers one shared block
        sees 1000 inputs, more than a memo holds, so the backward pass would otherwise recompute
        every forward. Gated blocks: (gate pre-activation, up pre-activation, product, W2 output).
        """
        if self.gated:
            fc1, gate, fc3, fc2, drop = self._parts
            a = fc1._fwd(x.mean, x.var, x.corr)
            b = fc3._fwd(x.mean, x.var, x.corr)
            h = gate._fwd2(a, b)
            c = fc2._fwd(*h)
            return _signal(*drop._fwd(*c)), (a, b, h, c)
        fc1, act, fc2, drop = self._parts
        a = fc1._fwd(x.mean, x.var, x.corr)
        b = act._fwd(*a)
        c = fc2._fwd(*b)
        return _signal(*drop._fwd(*c)), (a, b, c)

    def _backward_trace(self, x: Signal, trace: tuple[Any, ...] | None, g: Grad, kv: None = None) -> Grad:
        """`backward` given the `_trace` of the input ``x`` (None: recompute it)."""
        return _grad(*self._backward_f(x, trace, g.var, g.corr))

    def _backward_f(self, x: Signal, trace: tuple[Any, ...] | None, g_var: float, g_corr: float,
                    kv: None = None) -> tuple[float, float]:
        """`_backward_trace` as (variance, correlation): the engine feeds it to the LayerNorm and
        merge formulas without an intermediate record."""
        if trace is None:
            trace = self._trace(x)[1]
        if self.gated:
            return self._backward_gated(x, trace, g_var, g_corr)
        a, b, c = trace
        fc1, act, fc2, drop = self._parts   # last part first
        gv, gc = drop._bwd(*c, g_var, g_corr)
        gv, gc = fc2._bwd(*b, gv, gc)
        gv, gc = act._bwd(*a, gv, gc)
        return cast(tuple[float, float], fc1._bwd(x.mean, x.var, x.corr, gv, gc))

    def _backward_gated(self, x: Signal, trace: tuple[Any, ...], g_var: float, g_corr: float) -> tuple[float, float]:
        a, b, h, c = trace
        fc1, gate, fc3, fc2, drop = self._parts
        gv, gc = drop._bwd(*c, g_var, g_corr)
        gv, gc = fc2._bwd(*h, gv, gc)
        (ga_v, ga_c), (gb_v, gb_c) = gate._bwd2(a, b, gv, gc)
        v1, c1 = fc1._bwd(x.mean, x.var, x.corr, ga_v, ga_c)
        v3, c3 = fc3._bwd(x.mean, x.var, x.corr, gb_v, gb_c)
        var = v1 + v3 + self._reuse_var(a, b, gv)
        return var, clip_corr((v1 * c1 + v3 * c3) / var) if var > 0 else 0.0

    def _reuse_var(self, a: tuple[float, float, float], b: tuple[float, float, float], gv: float) -> float:
        """The O(1/d) weight-reuse terms of the input-gradient variance of a gated block.

        W1 enters g_a = g_h b act'(a) through a = x W1, and W1, W3 both enter the cross term of
        |W1 g_a + W3 g_b|^2. Gaussian integration by parts over one weight entry (Stein's lemma;
        docs/theory.md) adds, per input unit, d_ff sigma_1^2 v_h var_b [E[act'^2 a^2]/var_a - m2'
        + 2 E[act act' a]/var_a] / d_model, v_h the gradient variance at the product. The token
        covariance keeps the leading term (its reuse terms are r times smaller and not modelled).
        """
        if not a[1] > 0:
            return 0.0
        e_self, e_cross = _reuse_moments(_GATED[self.activation], a[1])
        dm2: float = self._parts[1]._act._gate_moments(a[1], 0.0)[2]
        return self.d_ff * self.w1_var * gv * b[1] * (e_self - dm2 + 2.0 * e_cross) / self.d_model


# head moments over d_model * v_var, per (head geometry, input, key/value input): see head_output
_HEAD_MEMO: dict[tuple[Any, ...], tuple[Any, ...]] = {}


@dataclass(frozen=True)
class AttentionBlock:
    """Multi-head attention: H heads of `Attention` (d_head = d/H) -> concat -> Linear(d -> d, o_var)
    -> Dropout(p).

    Heads have independent weights, so their contributions to the input gradient add: H times one
    head's variance and covariance. ``rope`` (base ``rope_base``) rotates every head's q and k by
    rotary positions (`Attention`, docs/rope.md; self-attention only). ``kv`` (cross-attention) gives
    the moments of the key/value stream; then `backward` is the gradient at the query input and
    `backward_kv` the one at the key/value input.


    ``n_kv_heads`` (None: ``n_heads``; must divide it): grouped-query attention, the query heads of a
    group of ``n_heads / n_kv_heads`` share one key and one value projection. Every second moment is
    the same as with ``n_heads`` key/value heads (docs/theory.md, "Grouped-query attention"): the
    output projection's slices O_h of different heads are independent and zero-mean, so every
    cross-term between two heads, forward (y = sum_h A_h V_g O_h) and backward (the gradient at a
    head's output is g_h = g O_h^T), is linear in O_h and in O_h' and vanishes in expectation, also
    when the two heads share K and V. Sharing changes how much the moments fluctuate from one weight
    draw to the next, not their expectation.

    ``qk_norm`` (None, "rmsnorm", "layernorm"): a per-head norm (gain 1, over d_head) of q and k
    before the logits; see `deepscalelm.theory.attention.Attention`.
    """

    d_model: int
    n_heads: int
    seq_len: int
    q_var: float
    k_var: float
    v_var: float
    o_var: float
    attn_dropout: float = 0.0
    dropout: float = 0.0
    causal: bool = False
    kv_len: int | None = None
    rope: bool = False
    rope_base: float = 10000.0
    n_kv_heads: int | None = None
    qk_norm: str | None = None
    _head: Attention = field(init=False, repr=False, compare=False)
    _proj: Linear = field(init=False, repr=False, compare=False)
    _drop: Dropout = field(init=False, repr=False, compare=False)
    _memo: dict[Any, Any] = field(init=False, repr=False, compare=False, default_factory=dict)
    _head_key: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be divisible by n_heads, got {self.d_model} and {self.n_heads}")
        if self.n_kv_heads is not None and (not isinstance(self.n_kv_heads, int) or isinstance(self.n_kv_heads, bool)
                                            or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_kv_heads must be None or a positive integer dividing n_heads={self.n_heads}, "
                             f"got {self.n_kv_heads!r}")
        # cross-attention over a memory of kv_len keys: seq_len queries attend to kv_len keys
        head = Attention(self.d_model, self.d_model // self.n_heads,
                         self.seq_len if self.kv_len is None else self.kv_len,
                         self.q_var, self.k_var, self.v_var, attn_dropout=self.attn_dropout,
                         causal=self.causal, q_len=self.seq_len, rope=self.rope, rope_base=self.rope_base,
                         qk_norm=self.qk_norm)
        object.__setattr__(self, "_head", head)
        # what the head's v_var-free moments depend on (see head_output)
        object.__setattr__(self, "_head_key", (self.d_model, self.n_heads, head.seq_len, head.q_len,
                                               head.q_var, head.k_var, head.attn_dropout, head.causal,
                                               head.exact, head.rope, head.rope_base, head.qk_norm))
        object.__setattr__(self, "_proj", Linear(self.d_model, self.d_model, self.o_var))
        object.__setattr__(self, "_drop", Dropout(self.dropout))

    def head_output(self, x: Signal, kv: Signal | None = None) -> Signal:
        """Moments of one head's output (before the output projection); memoised per input.

        The memo holds the head's moments divided by d_model * v_var (`Attention._forward_ctx`),
        shared by all blocks that differ only in their V/O variances: DSLM's schedule evaluates a
        unit-V/O block and then the final block of each layer on the same input, so the second is
        a scaling (the same operations as a direct computation, hence identical numbers).
        """
        return self._scale_head(self._head_raw(x, kv))

    def _head_raw(self, x: Signal, kv: Signal | None) -> tuple[Any, ...]:
        """`Attention._forward_ctx` of the input, through the shared memo (see head_output)."""
        key = (self._head_key, x, kv)
        raw = _HEAD_MEMO.get(key)
        if raw is None:
            raw = self._head._forward_ctx(x, kv)
            if len(_HEAD_MEMO) > 8192:
                _HEAD_MEMO.clear()
            _HEAD_MEMO[key] = raw
        return raw

    def _scale_head(self, raw: tuple[Any, ...]) -> Signal:
        """One head's output moments from `Attention._forward_ctx` (what `Attention.forward`
        does with it)."""
        return _signal(*self._head_moments(raw))

    def _head_moments(self, raw: tuple[Any, ...]) -> tuple[float, float, float]:
        """(mean, var, corr) of `_scale_head`: `Attention._signal` of the scaled moments."""
        dv = self.d_model * self._head.v_var
        var = max(dv * raw[0], 0.0)
        return 0.0, var, clip_corr(dv * raw[1] / var) if var > 0 else 0.0

    def forward(self, x: Signal, kv: Signal | None = None) -> Signal:
        return self._drop.forward(self._proj.forward(self.head_output(x, kv)))

    def _trace(self, x: Signal, kv: Signal | None = None) -> tuple[Signal, tuple[Any, ...]]:
        """(output, trace) for `_backward_trace`; the trace is `Attention._forward_ctx` of the
        input (the head's input moments and window sums, which its backward pass needs again)."""
        return self._trace_raw(self._head_raw(x, kv))

    def _trace_raw(self, raw: tuple[Any, ...]) -> tuple[Signal, tuple[Any, ...]]:
        """`_trace` from ``raw`` = `Attention._forward_ctx` of the input. The head output and its
        projection go through the float-level forms (`Linear._fwd`, `Dropout._fwd`): only the
        block output becomes a record."""
        return _signal(*self._drop._fwd(*self._proj._fwd(*self._head_moments(raw)))), raw

    def _unit_output_var(self, raw: tuple[Any, ...]) -> float:
        """``_trace_raw(raw)[0].var`` without building a record (DSLM's schedule)."""
        return self._drop._fwd(*self._proj._fwd(*self._head_moments(raw)))[1]

    def _grad_heads(self, g: Grad) -> Grad:
        """Gradient at the heads' output. Dropout and Linear backward do not depend on their
        input moments (so no forward values are needed)."""
        return self._grad_heads_f(g.var, g.corr)

    def _grad_heads_f(self, g_var: float, g_corr: float) -> Grad:
        gv, gc = self._drop._bwd(0.0, 0.0, 0.0, g_var, g_corr)
        return _grad(*self._proj._bwd(0.0, 0.0, 0.0, gv, gc))

    def backward(self, x: Signal, g: Grad, kv: Signal | None = None) -> Grad:
        return self._backward_trace(x, None, g, kv)

    def _backward_trace(self, x: Signal, trace: tuple[Any, ...] | None, g: Grad, kv: Signal | None = None) -> Grad:
        """`backward` given the `_trace` of the input (None: recompute it)."""
        return _grad(*self._backward_f(x, trace, g.var, g.corr, kv))

    def _backward_f(self, x: Signal, trace: tuple[Any, ...] | None, g_var: float, g_corr: float,
                    kv: Signal | None = None) -> tuple[float, float]:
        """`_backward_trace` as (variance, correlation) (see FFNBlock._backward_f)."""
        gh = self._grad_heads_f(g_var, g_corr)
        if kv is not None:
            one = self._head.backward(x, gh, kv=kv)
        elif trace is not None:   # the forward's input moments and window sums
            one = self._head._backward_ctx(x, gh, trace[2], trace[3])
        else:
            one = self._head.backward(x, gh)
        return self.n_heads * one.var, one.corr

    def backward_kv(self, x: Signal, g: Grad, kv: Signal, trace: tuple[Any, ...] | None = None) -> Grad:
        gh = self._grad_heads(g)
        one = self._head.backward_kv(x, gh, kv)
        return _grad(self.n_heads * one.var, one.corr)

    def _with_vo(self, v_var: float, o_var: float) -> AttentionBlock:
        """This block with other V and O variances, without re-validating the unchanged fields.

        DSLM builds one block per attention layer (its V/O variances are layer-dependent); cloning
        the instance dict skips the dataclass init and the head's argument checks (~10 us each).
        """
        if not (v_var >= 0.0 and o_var >= 0.0 and math.isfinite(v_var + o_var)):
            return replace(self, v_var=v_var, o_var=o_var)   # the public path reports the error
        head = object.__new__(type(self._head))
        head.__dict__.update(self._head.__dict__)
        head.v_var = float(v_var)
        blk = object.__new__(AttentionBlock)
        d = blk.__dict__
        d.update(self.__dict__)
        d["v_var"] = v_var
        d["o_var"] = o_var
        d["_head"] = head
        proj = object.__new__(Linear)   # Linear(d_model, d_model, o_var); o_var checked above
        proj.__dict__.update(d_in=self.d_model, d_out=self.d_model, weight_var=o_var)
        d["_proj"] = proj
        d["_memo"] = {}
        return blk


@dataclass(frozen=True)
class ResidualMerge:
    """y = lam * x + beta * F with F uncorrelated with x at initialisation (the residual merge).

    var_y = lam^2 var_x + beta^2 var_F; the token covariances add the same way. Backward, for a
    branch that maps the gradient g_y to g_branch at x: var_gx = lam^2 var_gy + beta^2 var_branch.
    """

    lam: float = 1.0
    beta: float = 1.0

    def forward(self, x: Signal, f: Signal) -> Signal:
        l2, b2 = self.lam ** 2, self.beta ** 2
        var = l2 * x.var + b2 * f.var
        cov = l2 * (x.corr * x.var) + b2 * (f.corr * f.var)   # the .cov properties, written out
        mean = self.lam * x.mean + self.beta * f.mean
        return _signal(mean, var, clip_corr(cov / var) if var > 0 else 0.0)

    def backward(self, g_skip: Grad, g_branch: Grad) -> Grad:
        """Combine the gradient through the skip (at y) and through the branch (already at x)."""
        return self._backward_f(g_skip, g_branch.var, g_branch.corr)

    def _backward_f(self, g_skip: Grad, b_var: float, b_corr: float) -> Grad:
        """`backward` with the branch gradient as (variance, correlation)."""
        l2, b2 = self.lam ** 2, self.beta ** 2
        var = l2 * g_skip.var + b2 * b_var
        cov = l2 * (g_skip.corr * g_skip.var) + b2 * (b_corr * b_var)
        return _grad(var, clip_corr(cov / var) if var > 0 else 0.0)


def sum_signals(parts: list[Signal]) -> Signal:
    """Moments of a sum of independent signals (e.g. summed embedding tables)."""
    var = sum(p.var for p in parts)
    cov = sum(p.cov for p in parts)
    return Signal(sum(p.mean for p in parts), var, clip_corr(cov / var) if var > 0 else 0.0)


def sum_grads(parts: list[Grad]) -> Grad:
    """Moments of a sum of independent gradients (e.g. memory gradients from several layers)."""
    var = sum(p.var for p in parts)
    cov = sum(p.cov for p in parts)
    return Grad(var, clip_corr(cov / var) if var > 0 else 0.0)


__all__ = ["FFNBlock", "AttentionBlock", "ResidualMerge", "sum_signals", "sum_grads"]
