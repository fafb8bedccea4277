"""Position-resolved gradient propagation through causal (decoder) stacks.

The pooled engine (`deepscalelm.theory.model`) describes the gradient of a stream point by one
variance and one token correlation. In a causal stack that loses two things (docs/causal_attention.md
§8):

* the gradient variance depends strongly on the position: key 1 is attended by every query, so early
  positions collect gradient from the whole sequence and their per-layer gain is far above that of
  late positions;
* the token covariance created by a causal backward pass is concentrated among early positions and
  is *not* exchangeable, so the next causal value path amplifies it much less than an exchangeable
  covariance with the same mean would be.

* the forward token correlation is not exchangeable either: early tokens share most of their keys,
  so after a few layers the first positions are far more correlated with each other than the pooled
  correlation says (0.4-0.8 against 0.16-0.54 measured in a 100-layer Post-LN DSLM stack), which
  flattens their softmax and lowers their backward gain.

Here a causal stack carries the full L x L token covariance of the forward stream (for the
per-window correlations r_n and the per-token variances that LayerNorm divides the gradient by) and
of the gradient G (per hidden unit; hidden units are exchangeable). Each causal
attention head maps G with its per-window softmax masses S_n, C_n, J_n (windows n = i), using the
same pair moments as the pooled formulas of `deepscalelm.theory.attention`, resolved per position
(r, v = (1 - r) sigma_s^2 and S_n, C_n, J_n taken per window; rho_ik = e^{C_ik v} per query pair):

* value path: E[A_ij^2] = S_i / i; E[A_ij A_il] = (1 - S_i) / (i (i - 1)) for j != l; two different
  queries i != k: E[A_ij A_kj] = (1 + (rho - 1)(1 - 1/min)) / (i k), rho = e^{r v}, and the key pairs
  j != l lose the same total (sum_{j,l} A_ij A_kl = 1);
* Q path (per query i): u_i [(a - r) J_i + coh (1 - S_i)^2] on the diagonal and
  G_ik [(1 - r)(1 - 1/min)/max + coh (1 - S_i)(1 - S_k)] off it;
* K path (per key j): sum_{i >= j} (a - r) J_i u_i / i + r (1 - r) sum_{i != k >= j} G_ik (1 - 1/min)
  (1 + (rho - 1)(1 - 1/min)) / (i k), no covariance between keys.

Pooling each of these over positions gives back exactly the pooled formulas for an exchangeable input
gradient (tested). The sums over queries are suffix sums (2-D for the cross-query terms), so one block
costs O(L^2) numpy operations. The forward covariance uses the same pair moments:
Cov(y_i, y_k) = d sigma_v^2 [sum_{j<=i, l<=k} K_jl/(i k) + (rho_ik - 1)(1 - 1/min)(1 - r) s^2/max
+ 2 c2/max]; FFN blocks map each pair's correlation with the pooled FFN formula (tabulated).

Rotary positions (docs/rope.md): window n uses v_n = (1 - r_n c_off(n)) sigma_s^2, a query pair
rho_ik - 1 = e^{C_ik sigma_s^2 [(1 - r_max) c(i - k) + r_max D_ik]} - 1 with the rotary kernel c and
the window centring D of `deepscalelm.theory.rope.RopeGeometry.pair_matrices`, and the Q/K-path and
coupling terms carry the per-pair or per-window rotary factors of docs/rope.md §4.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from .components import RMSNorm
from .moments import Grad, Signal, clip_corr
from .softmax_quad import CLOSURE_MAX_VAR, QUAD_FROM_VAR, masses_per_window, window_jac_mass, window_logit_mean_sq

__all__ = ["window_masses", "window_masses_var", "attention_forward", "attention_position_var", "ffn_forward",
           "forward_positional", "causal_backward", "pooled", "exchangeable"]

# The softmax-mass closure of `deepscalelm.theory.attention.softmax_masses` (log-normal model of the
# softmax denominator, 17-node trapezoid rule on [-6, 6]), vectorised over all windows n = 1..L.
# The math is copied (not imported) so the causal stack can evaluate every window in one numpy call.
_Z = np.arange(-6.0, 6.0 + 1e-9, 0.75)
_ZW = np.exp(-0.5 * _Z * _Z)
_ZW /= _ZW.sum()
_MASS_MEMO: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}


def window_masses(L: int, v: float) -> tuple[np.ndarray, np.ndarray]:
    """(S_n, C_n) for n = 1..L (arrays of length L) at effective logit variance ``v``."""
    key = (L, v)
    hit = _MASS_MEMO.get(key)
    if hit is not None:
        return hit
    n = np.arange(1, L + 1, dtype=float)
    if v <= 0.0:
        s, c = 1.0 / n, 1.0 / n ** 2
    elif v > CLOSURE_MAX_VAR:   # beyond the closure's range: exact quadrature (softmax_quad)
        s, c = masses_per_window(n, np.full(L, v))
    else:
        m = n[1:] - 1.0
        if v > 30.0:
            s2r = v + np.log1p((m - 1.0) * math.exp(-v)) - np.log(m)
        else:
            s2r = np.log1p(math.expm1(v) / m)
        mur = np.log(m) + 0.5 * v - 0.5 * s2r
        sw = np.sqrt(v + s2r)
        w = np.clip(mur[:, None] + sw[:, None] * _Z[None, :], -700.0, 700.0)
        q = 1.0 / (1.0 + np.exp(w))
        q2 = q * q
        s = np.concatenate(([1.0], n[1:] * (q2 @ _ZW)))
        c = np.concatenate(([1.0], n[1:] * ((q2 * q) @ _ZW)))
    if len(_MASS_MEMO) > 4096:
        _MASS_MEMO.clear()
    _MASS_MEMO[key] = (s, c)
    return s, c


def window_masses_var(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S_n, C_n) for n = 1..L with a different effective logit variance v_n per window."""
    L = len(v)
    n = np.arange(1, L + 1, dtype=float)
    vv = np.clip(v[1:], 1e-12, 30.0)
    m = n[1:] - 1.0
    s2r = np.log1p(np.expm1(vv) / m)
    mur = np.log(m) + 0.5 * vv - 0.5 * s2r
    sw = np.sqrt(vv + s2r)
    w = np.clip(mur[:, None] + sw[:, None] * _Z[None, :], -700.0, 700.0)
    q = 1.0 / (1.0 + np.exp(w))
    q2 = q * q
    s = np.concatenate(([1.0], n[1:] * (q2 @ _ZW)))
    c = np.concatenate(([1.0], n[1:] * ((q2 * q) @ _ZW)))
    big = np.flatnonzero(v > CLOSURE_MAX_VAR)
    big = big[big > 0]
    if big.size:   # windows beyond the closure's range: exact quadrature (softmax_quad)
        s[big], c[big] = masses_per_window(n[big], v[big])
    return s, c


def _rho1(win: _Win, geo: _Geom) -> np.ndarray:
    """rho_ik - 1 for every query pair (window of the later query): e^{kappa_ik} - 1 with kappa = C_ik v_max
    without rotation, C_ik sigma_s^2 [(1 - r_max) c(i - k) + r_max D_ik] with rotary positions
    (docs/rope.md §3); `softmax_quad.pattern_corr_factor` (vectorised) where that window's v exceeds the
    closure's range."""
    mx = geo.maxidx
    vm = win.v[mx]
    if win.rope is None:
        kappa = win.C * vm
    else:
        kc, dd = win.rope[0], win.rope[1]
        rM = win.r[mx]
        kappa = win.C * win.ss * ((1.0 - rM) * kc + rM * dd)
    rho1 = np.expm1(np.minimum(kappa, 700.0))
    if np.any(vm > CLOSURE_MAX_VAR):
        w = np.clip((vm - CLOSURE_MAX_VAR) / (QUAD_FROM_VAR - CLOSURE_MAX_VAR), 0.0, 1.0)
        ext = np.maximum(geo.n[mx] * win.S[mx], 1.0) ** win.C
        rho1 = np.where(w > 0.0, w * (ext - 1.0) + (1.0 - w) * rho1, rho1)
    return cast(np.ndarray, rho1)


class _Geom:
    """Position-pair constants of one sequence length (memoised)."""

    n: np.ndarray
    inv: np.ndarray
    one_m: np.ndarray
    inv_ik: np.ndarray
    over_max: np.ndarray
    eps_base: np.ndarray
    off: np.ndarray
    maxidx: np.ndarray
    pair_inv: np.ndarray
    _memo: dict[int, _Geom] = {}

    def __new__(cls, L: int) -> _Geom:
        g = cls._memo.get(L)
        if g is None:
            g = super().__new__(cls)
            n = np.arange(1, L + 1, dtype=float)
            g.n = n
            g.inv = 1.0 / n
            mn = np.minimum.outer(n, n)
            mx = np.maximum.outer(n, n)
            g.one_m = 1.0 - 1.0 / mn                       # 1 - 1/min(i, k)
            g.inv_ik = np.outer(g.inv, g.inv)              # 1/(i k)
            g.over_max = g.one_m / mx                      # (1 - 1/min)/max
            with np.errstate(divide="ignore", invalid="ignore"):
                g.eps_base = np.where(mx > 1, g.one_m / (mx - 1.0), 0.0)  # (1-1/min)/(max-1)
            g.off = ~np.eye(L, dtype=bool)
            g.maxidx = np.maximum.outer(np.arange(L), np.arange(L))
            g.pair_inv = np.concatenate(([0.0], 1.0 / (n[1:] * (n[1:] - 1.0))))
            cls._memo[L] = g
        return g


def _prefix2(a: np.ndarray) -> np.ndarray:
    """P_ik = sum_{j <= i, l <= k} a_jl."""
    return np.cumsum(np.cumsum(a, axis=0), axis=1)


def _suffix(a: np.ndarray) -> np.ndarray:
    """s_j = sum_{i >= j} a_i."""
    return np.cumsum(a[::-1])[::-1]


def _suffix2(a: np.ndarray) -> np.ndarray:
    """R_jl = sum_{i >= j, k >= l} a_ik."""
    return np.cumsum(np.cumsum(a[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]


def _diag_suffix2(a: np.ndarray) -> np.ndarray:
    """R_jj = sum_{i >= j, k >= j} a_ik for a symmetric ``a``."""
    return _suffix(np.diagonal(a) + 2.0 * np.triu(a, 1).sum(axis=1))


def _fold(x: Signal) -> tuple[float, float]:
    m2 = x.var + x.mean ** 2
    if m2 <= 0.0:
        return 0.0, 0.0
    return m2, clip_corr((x.corr * x.var + x.mean ** 2) / m2)


class _Win:
    """Per-window forward statistics of a causal head's input: correlation matrix C, mean variance
    s2, window correlations r_n (mean off-diagonal correlation of keys 1..n), logit variances."""

    C: np.ndarray
    s2: float
    r: np.ndarray
    ss: float
    rope: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
    v: np.ndarray
    S: np.ndarray
    Cm: np.ndarray
    J: np.ndarray

    def __init__(self, head: Any, K: np.ndarray) -> None:
        L = len(K)
        sd = np.sqrt(np.maximum(np.diag(K), 1e-300))
        self.C = np.clip(K / np.outer(sd, sd), -1.0, 1.0)
        self.s2 = float(np.mean(np.diag(K)))
        n = np.arange(1, L + 1, dtype=float)
        P = np.cumsum(np.diagonal(self.C) + 2.0 * np.tril(self.C, -1).sum(axis=1))
        r = np.empty(L)
        r[1:] = (P[1:] - n[1:]) / (n[1:] * (n[1:] - 1.0))
        r[0] = r[1] if L > 1 else 0.0
        self.r = np.clip(r, -1.0, 1.0)
        d = head.d_model
        self.ss = d * d * head._qk(self.s2, self.s2) * self.s2 * self.s2
        # rotary positions (docs/rope.md): window n sees the key correlation r_n c_off(n); the
        # query-pair kernel Kc and centring D of the shared logit part enter rho (`rho1`)
        self.rope = head._geo.pair_matrices() if getattr(head, "rope", False) else None
        kc = head._key_corr(self.r)
        self.v = (1.0 - kc) * self.ss if self.rope is None else (1.0 - kc * self.rope[3]) * self.ss
        if head.qk_norm is not None:   # bounded normed logits: moment-matched variance per window
            self.v = np.array([head._sphere_var(float(x)) for x in self.v])
        self.S, self.Cm = window_masses_var(self.v)
        self.J = np.maximum(self.S - 2.0 * self.Cm + self.S * self.S, 0.0)
        big = np.flatnonzero(self.v > CLOSURE_MAX_VAR)
        big = big[big > 0]
        if big.size:   # beyond the closure's range: the exact Jacobian mass (softmax_quad)
            self.J[big] = window_jac_mass(n[big], self.v[big], self.J[big])


def _exchangeable_cov(x: Signal, L: int) -> np.ndarray:
    s2, r = _fold(x)
    K = np.full((L, L), r * s2)
    K[np.diag_indices(L)] = s2
    return K


def attention_forward(comp: Any, K: np.ndarray, win: _Win | None = None) -> np.ndarray:
    """L x L token covariance of a causal `AttentionBlock` output (after its dropout), given the
    covariance K of its input (docs/causal_attention.md §3 with window n = i and the window's own
    correlation; query pairs: shared keys with rho_ik = e^{C_ik v})."""
    head = comp._head
    L, d = comp.seq_len, comp.d_model
    geo = _Geom(L)
    w = _Win(head, K) if win is None else win
    s2, r, S = w.s2, w.r, w.S
    a = 1.0 / (1.0 - head.attn_dropout)
    t = d * head._qk(s2, s2) * s2 ** 3
    c2 = (1.0 - r) ** 2 * t
    n = geo.n
    cf = 1.0 if w.rope is None else w.rope[2]               # rotated keys shrink the key-side coupling
    var = r * s2 + s2 * S * (a - r) + c2 * (1.0 - 1.0 / n) * (cf + 4.0 * a * S)
    big = np.flatnonzero(w.v > CLOSURE_MAX_VAR)
    if big.size:   # beyond the closure's range: exact value-logit coupling (`Attention._var_coupled`)
        m = window_logit_mean_sq(n[big], w.v[big])
        ext = r[big] * s2 + s2 * S[big] * (a - r[big]) + (1.0 - r[big]) * s2 * (m - S[big]) / d
        q = np.clip((w.v[big] - CLOSURE_MAX_VAR) / (QUAD_FROM_VAR - CLOSURE_MAX_VAR), 0.0, 1.0)
        var[big] = q * ext + (1.0 - q) * var[big]
    mx = geo.maxidx
    rho1 = _rho1(w, geo)
    out = _prefix2(K) * geo.inv_ik
    c2m = c2[mx] if w.rope is None else c2[mx] * w.rope[2][mx]
    out += (rho1 * geo.one_m * (1.0 - r[mx]) * s2 + 2.0 * c2m) * geo.inv[mx]
    out[np.diag_indices(L)] = np.maximum(var, 0.0)
    return cast(np.ndarray, out * ((d * head.v_var) * (d * comp.o_var)))


def attention_position_var(comp: Any, x: Signal) -> np.ndarray:
    """Per-position variance of a causal `AttentionBlock` output for an exchangeable input ``x``;
    its mean over positions is the pooled block variance."""
    out = np.diag(attention_forward(comp, _exchangeable_cov(x, comp.seq_len))).copy()
    return cast(np.ndarray, out / (1.0 - comp.dropout))


_FFN_GRID = np.linspace(-1.0, 1.0, 41)
_FFN_MEMO: dict[tuple[Any, float], tuple[float, np.ndarray]] = {}


def ffn_forward(comp: Any, K: np.ndarray) -> np.ndarray:
    """L x L token covariance of an `FFNBlock` output, per position pair from the pair's correlation
    (the pooled formula tabulated over the correlation and interpolated)."""
    s2 = float(np.mean(np.diag(K)))
    key = (comp, round(s2, 12))
    tab = _FFN_MEMO.get(key)
    if tab is None:
        if len(_FFN_MEMO) > 256:
            _FFN_MEMO.clear()
        covs: list[float] | np.ndarray   # the list of table rows, then the table
        covs = []
        for c in _FFN_GRID:
            f = comp.forward(Signal(0.0, s2, float(c)))
            covs.append(f.cov)
        tab = (f.var, np.array(covs))
        _FFN_MEMO[key] = tab
    var, covs = tab
    sd = np.sqrt(np.maximum(np.diag(K), 1e-300))
    C = np.clip(K / np.outer(sd, sd), -1.0, 1.0)
    out = np.interp(C, _FFN_GRID, covs)
    out[np.diag_indices(len(K))] = var
    return cast(np.ndarray, out)


def _attention_backward(comp: Any, x: Signal | np.ndarray | None, G: np.ndarray, win: _Win | None = None) -> np.ndarray:
    """Gradient covariance at the input of a causal `AttentionBlock` (all heads), given the one at
    its output (after the output dropout). ``x``: the input's covariance matrix (or a `Signal`,
    taken as exchangeable)."""
    head = comp._head
    L, d, dk = comp.seq_len, comp.d_model, head.d_head
    geo = _Geom(L)
    if win is None:
        win = _Win(head, _exchangeable_cov(x, L) if isinstance(x, Signal) else cast(np.ndarray, x))
    # output dropout (diagonal only) and the output projection
    Gh = G.copy()
    Gh[np.diag_indices(L)] /= (1.0 - comp.dropout)
    Gh *= d * comp.o_var
    u = np.diag(Gh).copy()
    w = Gh.copy()
    w[np.diag_indices(L)] = 0.0

    ss, r, s, jm = win.ss, win.r, win.S, win.J
    ss = ss * head._qk_grad_gain()   # ss enters only the Q and K paths below (QK-norm gain)
    mx = geo.maxidx
    rM = r[mx]                                            # window correlation of the later query
    rho1 = _rho1(win, geo)  # query pair i, k: e^{C_ik v} - 1
    a = 1.0 / (1.0 - head.attn_dropout)
    inv = geo.inv
    base = dk * head.v_var

    # ---- value path
    wi = w * geo.inv_ik                                   # G_ik / (i k), i != k (zero diagonal)
    out = _suffix2(wi * (1.0 - rho1 * geo.eps_base))
    so = _suffix(u * (1.0 - s) * geo.pair_inv)            # i = k, j != l
    out += so[mx]
    out *= base

    # same-key extras of query pairs (value path: rho excess; K path: coherent part); only the
    # diagonal of their 2-D suffix sums is needed
    y = base * rho1 * (geo.one_m + geo.eps_base)
    kc = 1.0 if win.rope is None else win.rope[0]        # rotary kernel c(i - k) of a query pair
    y += (ss * base) * win.C * (1.0 - rM) * geo.one_m * (1.0 + rho1 * geo.one_m) * kc

    # ---- Q path (per query)
    coh = (1.0 - r) / d
    cq = ss * (1.0 - r) * base                            # per query
    one_s = 1.0 - s
    cqM = ss * base * (1.0 - rM) ** 2
    if win.rope is None:
        out += w * (cqM * geo.over_max + (ss * base / d) * np.outer((1.0 - r) * one_s, (1.0 - r) * one_s))
        q_diag = cq * u * ((a - r) * jm + coh * one_s * one_s)
    else:   # docs/rope.md §4: shared keys no longer drop out, coherent parts shrink with the rotation
        cf, co = win.rope[2], win.rope[3]
        h = (1.0 - r) * one_s * np.sqrt(cf)
        out += w * (cqM * geo.over_max * kc + (ss * base / d) * np.outer(h, h))
        q_diag = ss * base * u * ((1.0 - r * co) * (a - r) * jm + (1.0 - r) ** 2 / d * cf * one_s * one_s)

    # ---- diagonal: value path (same query; replaces the j != l term added above), extras, Q path,
    # K path (incoherent)
    diag = (base * (_suffix(a * s * inv * u) - so) + _diag_suffix2(wi * y)
            + q_diag
            + ss * base * _suffix((a - r) * jm * inv * u))
    out[np.diag_indices(L)] += diag
    return cast(np.ndarray, comp.n_heads * out)


def _linear_backward(comp: Any, x: Signal, G: np.ndarray, kv: Signal | None = None) -> np.ndarray:
    """A position-wise block (FFN, cross-attention query path): the pooled backward is linear in
    (variance, covariance), so it acts on G as one gain on the diagonal and one off it."""
    if kv is None:
        gv = comp.backward(x, Grad(1.0, 0.0)).var
        gc = comp.backward(x, Grad(1.0, 1.0)).cov
    else:
        gv = comp.backward(x, Grad(1.0, 0.0), kv=kv).var
        gc = comp.backward(x, Grad(1.0, 1.0), kv=kv).cov
    out = G * gc
    out[np.diag_indices(len(G))] = np.diag(G) * gv
    return cast(np.ndarray, out)


def pooled(G: np.ndarray) -> Grad:
    """Pooled moments: variance = mean of the diagonal, corr = mean off-diagonal / variance."""
    L = len(G)
    var = float(np.trace(G)) / L
    if var <= 0.0:
        return Grad(0.0, 0.0)
    cov = (float(G.sum()) - L * var) / (L * (L - 1)) if L > 1 else 0.0
    return Grad(var, clip_corr(cov / var))


def exchangeable(g: Grad, L: int) -> np.ndarray:
    """The L x L covariance of an exchangeable gradient with moments ``g``."""
    G = np.full((L, L), g.cov)
    G[np.diag_indices(L)] = g.var
    return G


def _ln_corr(Z: np.ndarray, d: int, dims: int | None = None) -> np.ndarray:
    """Token covariance after LayerNorm: unit variance, correlation r (1 - (1 - r^2)/(2(d-1))).

    ``dims``: the dimension in place of d-1 (d for an RMSNorm of a zero-mean input, which does not
    remove the mean)."""
    n = d - 1 if dims is None else dims
    sd = np.sqrt(np.maximum(np.diag(Z), 1e-300))
    C = np.clip(Z / np.outer(sd, sd), -1.0, 1.0)
    C = C * (1.0 - (1.0 - C * C) / (2.0 * n))
    C[np.diag_indices(len(Z))] = 1.0
    return cast(np.ndarray, C)


def forward_positional(config: Any, steps: Any, emb: Signal) -> list[tuple[np.ndarray, np.ndarray, _Win | None]]:
    """Per step: (per-position variance of the stream before the merge, of z = lam x + beta F, and
    the window statistics `_Win` of a causal attention block's input, None for other blocks)."""
    L, d = config.seq_len, config.d_model
    dims = d if config.norm_type == "rmsnorm" else None
    pre = config.norm == "pre"
    Kx = _exchangeable_cov(emb, L)
    out = []
    for st in steps:
        Kh = _ln_corr(Kx, d, dims) if pre else Kx
        win = None
        if st.kv is not None:
            Kf = _exchangeable_cov(st.f, L)
        elif getattr(st.comp, "causal", False):
            win = _Win(st.comp._head, Kh)
            Kf = attention_forward(st.comp, Kh, win)
            Kf[np.diag_indices(L)] /= (1.0 - st.comp.dropout)
        else:
            Kf = ffn_forward(st.comp, Kh)
        Z = st.merge.lam ** 2 * Kx + st.merge.beta ** 2 * Kf
        out.append((np.diag(Kx).copy(), np.diag(Z).copy(), win))
        Kx = Z if pre else _ln_corr(Z, d, dims)
    return out


def _rms_grad(G: np.ndarray, rms: RMSNorm | None, corr: float) -> np.ndarray:
    """An RMSNorm's finite-d backward factors (`RMSNorm._grad_factors` of a zero-mean input with the
    pooled correlation ``corr``, relative to the 1/variance already applied per position) on G.
    Nothing for a LayerNorm (``rms`` None)."""
    if rms is None:
        return G
    fv, fc = rms._grad_factors(0.0, 1.0, corr)
    diag = np.diag(G) * fv
    G *= fc
    G[np.diag_indices(len(G))] = diag
    return G


def causal_backward(config: Any, steps: Any, g_top: Grad, emb: Signal | float,
                    seed: Grad | None = None) -> tuple[list[Grad], Grad, list[Grad]]:
    """Backward pass of one causal stack with position-resolved gradient covariance.

    ``g_top`` is the gradient at the stack's last stream point (Post-LN; after the final LayerNorm
    for Pre-LN, where it is divided here per position by the stream's per-position variance);
    ``emb`` the moments of the stack input. Returns (pooled gradient after each step in forward
    order, pooled gradient at the stack input, pooled key/value gradients of cross-attentions).
    """
    L = config.seq_len
    pre = config.norm == "pre"
    rms = RMSNorm(config.d_model) if config.norm_type == "rmsnorm" else None
    if not isinstance(emb, Signal):
        emb = Signal(0.0, float(emb), 0.0)
    g_top = seed if seed is not None else g_top
    fwd = forward_positional(config, steps, emb)
    G = exchangeable(g_top, L)
    if pre:
        x_last = fwd[-1][1] if steps else np.full(L, emb.var)
        sd = 1.0 / np.sqrt(x_last)
        G = _rms_grad(G * np.outer(sd, sd), rms, steps[-1].y.corr if steps else emb.corr)
    after: list[Grad] = [Grad(0.0, 0.0)] * len(steps)
    kv_grads: list[Grad] = []
    for k in range(len(steps) - 1, -1, -1):
        st = steps[k]
        x_var, z_var, win = fwd[k]
        after[k] = pooled(G)
        if pre:
            Gz = G
        else:
            sd = 1.0 / np.sqrt(z_var)
            Gz = G * sd[:, None]
            Gz *= sd[None, :]
            Gz = _rms_grad(Gz, rms, st.z.corr)
        if st.kv is not None:
            gb = _linear_backward(st.comp, st.h, Gz, kv=st.kv)
            gkv = st.comp.backward_kv(st.h, pooled(Gz), st.kv)
            kv_grads.append(Grad(st.merge.beta ** 2 * gkv.var, gkv.corr))
        elif getattr(st.comp, "causal", False):
            gb = _attention_backward(st.comp, None, Gz, win)
        else:
            gb = _linear_backward(st.comp, st.h, Gz)
        if pre:
            sd = 1.0 / np.sqrt(x_var)
            gb *= sd[:, None]
            gb *= sd[None, :]
            gb = _rms_grad(gb, rms, st.x.corr)
        gb *= st.merge.beta ** 2
        gb += st.merge.lam ** 2 * Gz
        G = gb
    return after, pooled(G), kv_grads
