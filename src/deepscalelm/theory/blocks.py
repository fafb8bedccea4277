"""Block-level moments (spec §4): the FFN block, the multi-head attention block, the residual merge.

A block maps the moments of its input (a LayerNorm output in Pre-LN, the normalised stream in
Post-LN) to the moments of its output F *after* its output dropout and before the residual scaling.
``backward(x, g)`` takes the block input's moments and the gradient at F and returns the gradient at
the block input. Blocks are compositions of `deepscalelm.theory.components`, so every assumption of
those components carries over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .components import Attention, Dropout, GeLU, Linear, ReLU
from .moments import Grad, Signal, clip_corr


@dataclass(frozen=True)
class FFNBlock:
    """Linear(d -> d_ff, w1_var) -> ReLU|GeLU -> Linear(d_ff -> d, w2_var) -> Dropout(p)."""

    d_model: int
    d_ff: int
    w1_var: float
    w2_var: float
    activation: str = "relu"
    dropout: float = 0.0
    _parts: tuple = field(init=False, repr=False, compare=False)
    _memo: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        parts = (Linear(self.d_model, self.d_ff, self.w1_var),
                 ReLU() if self.activation == "relu" else GeLU(),
                 Linear(self.d_ff, self.d_model, self.w2_var),
                 Dropout(self.dropout))
        object.__setattr__(self, "_parts", parts)

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
        return self._parts[-1].forward(self._inputs(x)[-1])

    def backward(self, x: Signal, g: Grad) -> Grad:
        ins = self._inputs(x)
        for part, inp in zip(reversed(self._parts), reversed(ins)):
            g = part.backward(inp, g)
        return g


@dataclass(frozen=True)
class AttentionBlock:
    """Multi-head attention: H heads of `Attention` (d_head = d/H) -> concat -> Linear(d -> d, o_var)
    -> Dropout(p).

    Heads have independent weights, so their contributions to the input gradient add: H times one
    head's variance and covariance. ``kv`` (cross-attention) gives the moments of the key/value stream;
    then `backward` is the gradient at the query input and `backward_kv` the one at the key/value input.
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
    _head: object = field(init=False, repr=False, compare=False)
    _proj: Linear = field(init=False, repr=False, compare=False)
    _drop: Dropout = field(init=False, repr=False, compare=False)
    _memo: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be divisible by n_heads, got {self.d_model} and {self.n_heads}")
        # cross-attention over a memory of kv_len keys: seq_len queries attend to kv_len keys
        head = Attention(self.d_model, self.d_model // self.n_heads,
                         self.seq_len if self.kv_len is None else self.kv_len,
                         self.q_var, self.k_var, self.v_var, attn_dropout=self.attn_dropout,
                         causal=self.causal, q_len=self.seq_len)
        object.__setattr__(self, "_head", head)
        object.__setattr__(self, "_proj", Linear(self.d_model, self.d_model, self.o_var))
        object.__setattr__(self, "_drop", Dropout(self.dropout))

    def head_output(self, x: Signal, kv: Signal | None = None) -> Signal:
        """Moments of one head's output (before the output projection); memoised per input."""
        key = (x, kv)
        out = self._memo.get(key)
        if out is None:
            out = self._head.forward(x) if kv is None else self._head.forward(x, kv=kv)
            if len(self._memo) > 256:
                self._memo.clear()
            self._memo[key] = out
        return out

    def forward(self, x: Signal, kv: Signal | None = None) -> Signal:
        return self._drop.forward(self._proj.forward(self.head_output(x, kv)))

    def _grad_heads(self, x: Signal, g: Grad, kv: Signal | None) -> tuple[Signal, Grad]:
        h = self.head_output(x, kv)
        o = self._proj.forward(h)
        return h, self._proj.backward(h, self._drop.backward(o, g))

    def backward(self, x: Signal, g: Grad, kv: Signal | None = None) -> Grad:
        _, gh = self._grad_heads(x, g, kv)
        one = self._head.backward(x, gh) if kv is None else self._head.backward(x, gh, kv=kv)
        return Grad(self.n_heads * one.var, one.corr)

    def backward_kv(self, x: Signal, g: Grad, kv: Signal) -> Grad:
        _, gh = self._grad_heads(x, g, kv)
        one = self._head.backward_kv(x, gh, kv)
        return Grad(self.n_heads * one.var, one.corr)


@dataclass(frozen=True)
class ResidualMerge:
    """y = lam * x + beta * F with F uncorrelated with x at initialisation (spec §4.3).

    var_y = lam^2 var_x + beta^2 var_F; the token covariances add the same way. Backward, for a
    branch that maps the gradient g_y to g_branch at x: var_gx = lam^2 var_gy + beta^2 var_branch.
    """

    lam: float = 1.0
    beta: float = 1.0

    def forward(self, x: Signal, f: Signal) -> Signal:
        l2, b2 = self.lam ** 2, self.beta ** 2
        var = l2 * x.var + b2 * f.var
        cov = l2 * x.cov + b2 * f.cov
        mean = self.lam * x.mean + self.beta * f.mean
        return Signal(mean, var, clip_corr(cov / var) if var > 0 else 0.0)

    def backward(self, g_skip: Grad, g_branch: Grad) -> Grad:
        """Combine the gradient through the skip (at y) and through the branch (already at x)."""
        l2, b2 = self.lam ** 2, self.beta ** 2
        var = l2 * g_skip.var + b2 * g_branch.var
        cov = l2 * g_skip.cov + b2 * g_branch.cov
        return Grad(var, clip_corr(cov / var) if var > 0 else 0.0)


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
