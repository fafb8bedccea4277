"""One registry of where a transformer keeps its residual stream, blocks, norms and projections.

A `Structure` names, as dotted module paths, the parts of one residual stack that signal-propagation
code needs: the ``blocks`` (the list of transformer layers, whose outputs are the residual stream),
inside each layer the attention projections (``q``, ``k``, ``v`` or one fused ``qkv`` whose output
is ``[q | k | v]``), the attention output ``attn_out``, the MLP ``mlp_in`` / ``mlp_gate`` /
``mlp_out``, the per-block norms, the embeddings, the final norm and the heads; plus ``norm``, the
norm placement:

* ``"pre"``:  x <- x + F(norm(x)) per block, a final norm before the head (GPT-2, Llama);
* ``"post"``: x <- norm(x + F(x)) per block (BERT, RoBERTa).

Paths inside a layer are relative to the layer; the others are relative to the model, after one of
the ``bases`` prefixes (``GPT2LMHeadModel`` keeps its stack under ``transformer.``, ``GPT2Model``
at the top); head paths are relative to the model itself. `resolve(model)` finds the entry for a
model (its own registration, else by class, else by ``config.model_type``) and returns a
`Resolved` with full module names.

Signal-propagation probes (`deepscalelm.measure`, `deepscalelm.check`, `Telemetry`, the NaN guard
and FSDP sharding) read the stream from `Resolved.sites`: the optional ``stream_in`` module (its
output is the stream entering the first layer, record ``embedding``), then per layer either the
layer itself (record block ``layer``) or, when ``residuals`` names the layer's residual sub-blocks
(each returning the stream after its own merge), one record per sub-block with its ``branch``
output F; then the final norm (record ``final_norm``).

Describe any other model in a few lines (a nanoGPT-style model)::

    import deepscalelm
    deepscalelm.register(GPT, blocks="transformer.h", qkv="attn.c_attn", attn_out="attn.c_proj",
                         mlp_in="mlp.c_fc", mlp_out="mlp.c_proj", attn_norm="ln_1", mlp_norm="ln_2",
                         tok_emb="transformer.wte", pos_emb="transformer.wpe",
                         final_norm="transformer.ln_f", head="lm_head", norm="pre",
                         stream_in="transformer.drop")
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import DSLMError

__all__ = ["Structure", "Resolved", "Layer", "Site", "register", "resolve", "find_structure", "families",
           "structure_for", "stacks_of", "detect", "registered", "own_structure", "LAYER_ROLES", "MODEL_ROLES",
           "HEAD_ROLES"]

#: roles inside one layer (paths relative to the layer)
LAYER_ROLES = ("q", "k", "v", "qkv", "attn_out", "mlp_in", "mlp_gate", "mlp_out", "attn_norm", "mlp_norm")
#: roles of the stack (relative to the model after the base prefix)
MODEL_ROLES = ("tok_emb", "pos_emb", "type_emb", "emb_norm", "final_norm")
#: head roles (relative to the model): untied LM head, MLM transform dense and its norm
HEAD_ROLES = ("head", "head_dense", "head_norm")


@dataclass(frozen=True)
class Structure:
    """Where one residual stack's parts are (see module docstring); ``None`` = the model has none.

    ``family`` names the entry in messages. ``causal``: decoder (True) or bidirectional encoder.
    ``own``: a deepscalelm model (residual scaling held as ``lam``/``beta`` on its blocks).
    ``rotary``: the q/k projections' outputs are before rotary positions, which the attention module
    receives as its ``position_embeddings`` argument (Hugging Face Llama family).
    ``stream_in`` (relative to the base): module whose output is the stream entering the first
    layer. ``residuals``: ``(record block, path in the layer)`` of residual sub-blocks that each
    return the stream after their merge (empty: the whole layer is one stream point);
    ``branch``: path inside such a sub-block of the module returning its branch output F.
    """

    family: str
    blocks: str
    attn_out: str
    mlp_in: str
    mlp_out: str
    norm: str = "pre"
    causal: bool = True
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    mlp_gate: str | None = None
    attn_norm: str | None = None
    mlp_norm: str | None = None
    tok_emb: str | None = None
    pos_emb: str | None = None
    type_emb: str | None = None
    emb_norm: str | None = None
    final_norm: str | None = None
    head: str | None = None
    head_dense: str | None = None
    head_norm: str | None = None
    bases: tuple[str, ...] = ("",)
    own: bool = False
    rotary: bool = False
    stream_in: str | None = None
    residuals: tuple[tuple[str, str], ...] = ()
    branch: str | None = None

    def __post_init__(self) -> None:
        if self.norm not in ("pre", "post"):
            raise ValueError(f"Structure.norm must be 'pre' or 'post', got {self.norm!r}")
        if self.qkv is None and None in (self.q, self.k, self.v):
            raise ValueError(f"Structure {self.family!r}: give q, k and v, or one fused qkv")
        if self.qkv is not None and any(x is not None for x in (self.q, self.k, self.v)):
            raise ValueError(f"Structure {self.family!r}: give either q/k/v or a fused qkv, not both")
        if not all(isinstance(r, tuple) and len(r) == 2 for r in self.residuals):
            raise ValueError(f"Structure {self.family!r}: residuals must be (record block, path) pairs, "
                             f"got {self.residuals!r}")


@dataclass(frozen=True)
class Layer:
    """Full module names of one transformer layer's parts (absent roles are left out).

    ``residuals``: (record block, sub-block name, branch-output name or None) per residual sub-block.
    """

    index: int
    name: str
    parts: dict[str, str]
    residuals: tuple[tuple[str, str, str | None], ...] = ()


@dataclass(frozen=True)
class Site:
    """One point where the residual stream is read, keyed like `deepscalelm.records`.

    ``name``: the module whose (first) output tensor ``[B, L, d]`` is the stream; ``branch``: the
    module whose output is the block output F of that merge (None: not available).
    """

    stack: str
    layer: int
    block: str
    name: str
    branch: str | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.stack, self.layer, self.block)


@dataclass(frozen=True)
class Resolved:
    """A `Structure` applied to one model: full module names, layers in forward order."""

    structure: Structure
    base: str
    layers: tuple[Layer, ...]
    parts: dict[str, str]
    stack: str = ""
    stream_in: str | None = None

    @property
    def stream_points(self) -> list[str]:
        """Modules whose outputs carry the residual stream: every layer, then the final norm."""
        names = [layer.name for layer in self.layers]
        return names + ([self.parts["final_norm"]] if "final_norm" in self.parts else [])

    @property
    def sites(self) -> list[Site]:
        """Every stream read point in forward order (see the module docstring)."""
        out = [Site(self.stack, 0, "embedding", self.stream_in)] if self.stream_in else []
        for layer in self.layers:
            if layer.residuals:
                out.extend(Site(self.stack, layer.index + 1, block, name, branch)
                           for block, name, branch in layer.residuals)
            else:
                out.append(Site(self.stack, layer.index + 1, "layer", layer.name))
        if "final_norm" in self.parts:
            out.append(Site(self.stack, len(self.layers), "final_norm", self.parts["final_norm"]))
        return out

    def attention(self, layer: Layer) -> str | None:
        """Name of the attention module of ``layer``: the parent of its q (or fused qkv) projection."""
        proj = layer.parts.get("qkv") or layer.parts.get("q")
        return proj.rsplit(".", 1)[0] if proj and proj != layer.name else None


_BY_CLASS: dict[Any, Structure] = {}
_BY_TYPE: dict[str, Structure] = {}


def register(match: Any, structure: Structure | None = None, **paths: Any) -> Structure:
    """Register how models matching ``match`` are laid out; returns the `Structure`.

    ``match``: a class (its subclasses match too), a class name, or a Hugging Face ``model_type``
    string prefixed with ``"model_type:"``. Give a ready `Structure` or its fields as keywords
    (``blocks``, ``attn_out``, ``mlp_in``, ``mlp_out`` required; ``family`` defaults to the class
    name). A later registration for the same ``match`` replaces the earlier one.
    """
    if structure is None:
        family = paths.pop("family", getattr(match, "__name__", str(match)))
        known = {f.name for f in dataclasses.fields(Structure)} - {"family"}
        unknown = sorted(set(paths) - known)
        if unknown:
            raise ValueError(f"register: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [f for f in ("blocks", "attn_out", "mlp_in", "mlp_out") if f not in paths]
        if missing:
            raise ValueError(f"register: {family!r} needs {', '.join(missing)} (module paths)")
        structure = Structure(family=family, **paths)
    elif paths:
        raise ValueError("register: give a Structure or keyword paths, not both")
    if isinstance(match, str) and match.startswith("model_type:"):
        _BY_TYPE[match[len("model_type:"):]] = structure
    else:
        _BY_CLASS[match] = structure
    return structure


def families() -> list[str]:
    """Family names of every registered structure (for messages)."""
    return sorted({s.family for s in (*_BY_CLASS.values(), *_BY_TYPE.values(), _OURS)})


def find_structure(model: nn.Module) -> Structure:
    """The registered `Structure` of ``model``: by class (nearest in the MRO), then ``config.model_type``."""
    for cls in type(model).__mro__:
        for key in (cls, cls.__name__):
            if key in _BY_CLASS:
                return _BY_CLASS[key]
    if _is_ours(model):
        return _OURS
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if isinstance(model_type, str) and model_type in _BY_TYPE:
        return _BY_TYPE[model_type]
    raise DSLMError(
        f"deepscalelm does not know the layout of {type(model).__name__}"
        + (f" (model_type {model_type!r})" if model_type else "")
        + f"; supported families: {', '.join(families())}. Describe it with deepscalelm.register("
          f"{type(model).__name__}, blocks=..., attn_out=..., mlp_in=..., mlp_out=..., ...) (docs/hf.md)")


def _suggest(path: str, names: list[str]) -> str:
    close = difflib.get_close_matches(path, names, n=4, cutoff=0.5)
    if close:
        return "closest: " + ", ".join(close)
    return "top-level modules: " + ", ".join(n for n in names if n and "." not in n)


def _prefixed(base: str, path: str) -> str:
    return base + path if base else path


def resolve(model: nn.Module, structure: Structure | None = None) -> Resolved:
    """Full module names of ``model``'s parts from ``structure`` (default: `find_structure`).

    Raises `DSLMError` naming the missing module and the closest names when a path is wrong.
    """
    structure = find_structure(model) if structure is None else structure
    modules = dict(model.named_modules())
    base = next((b for b in structure.bases if _prefixed(b, structure.blocks) in modules), None)
    if base is None:
        tried = ", ".join(repr(_prefixed(b, structure.blocks)) for b in structure.bases)
        raise DSLMError(f"{structure.family}: {type(model).__name__} has no block list {tried}; "
                        f"{_suggest(_prefixed(structure.bases[0], structure.blocks), list(modules))}")
    blocks = modules[_prefixed(base, structure.blocks)]
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise DSLMError(f"{structure.family}: blocks {structure.blocks!r} must be an nn.ModuleList or "
                        f"nn.Sequential of layers, got {type(blocks).__name__}")
    layers = []
    for i in range(len(blocks)):
        name = f"{_prefixed(base, structure.blocks)}.{i}"
        parts = {}
        for role in LAYER_ROLES:
            rel = getattr(structure, role)
            if rel is None:
                continue
            full = f"{name}.{rel}"
            if full not in modules:
                raise DSLMError(f"{structure.family}: layer {name!r} has no {role} module {rel!r}; "
                                f"{_suggest(full, list(modules))}")
            parts[role] = full
        layers.append(Layer(i, name, parts, _residuals(structure, name, modules)))
    parts = {}
    for role in MODEL_ROLES + HEAD_ROLES:
        rel = getattr(structure, role)
        if rel is None:
            continue
        full = rel if role in HEAD_ROLES else _prefixed(base, rel)
        if full in modules:
            parts[role] = full
        elif role not in HEAD_ROLES:  # heads are optional (GPT2Model has none)
            raise DSLMError(f"{structure.family}: {type(model).__name__} has no {role} module {full!r}; "
                            f"{_suggest(full, list(modules))}")
    stream_in = None
    if structure.stream_in is not None:
        stream_in = _prefixed(base, structure.stream_in)
        if stream_in not in modules:
            raise DSLMError(f"{structure.family}: {type(model).__name__} has no stream_in module {stream_in!r}; "
                            f"{_suggest(stream_in, list(modules))}")
    return Resolved(structure, base, tuple(layers), parts, stream_in=stream_in)


def _residuals(structure: Structure, layer: str, modules: dict[str, nn.Module],
               ) -> tuple[tuple[str, str, str | None], ...]:
    out = []
    for block, rel in structure.residuals:
        full = f"{layer}.{rel}"
        if full not in modules:
            raise DSLMError(f"{structure.family}: layer {layer!r} has no residual sub-block {rel!r}; "
                            f"{_suggest(full, list(modules))}")
        branch = f"{full}.{structure.branch}" if structure.branch else None
        if branch is not None and branch not in modules:
            raise DSLMError(f"{structure.family}: residual sub-block {full!r} has no branch module "
                            f"{structure.branch!r}; {_suggest(branch, list(modules))}")
        out.append((block, full, branch))
    return tuple(out)


# ------------------------------------------------------------------------------------ built-ins
_GPT2 = Structure(family="gpt2", blocks="h", qkv="attn.c_attn", attn_out="attn.c_proj", mlp_in="mlp.c_fc",
                  mlp_out="mlp.c_proj", attn_norm="ln_1", mlp_norm="ln_2", tok_emb="wte", pos_emb="wpe",
                  final_norm="ln_f", head="lm_head", norm="pre", causal=True, bases=("transformer.", ""))
_BERT = Structure(family="bert", blocks="encoder.layer", q="attention.self.query", k="attention.self.key",
                  v="attention.self.value", attn_out="attention.output.dense", mlp_in="intermediate.dense",
                  mlp_out="output.dense", attn_norm="attention.output.LayerNorm", mlp_norm="output.LayerNorm",
                  tok_emb="embeddings.word_embeddings", pos_emb="embeddings.position_embeddings",
                  type_emb="embeddings.token_type_embeddings", emb_norm="embeddings.LayerNorm",
                  head="cls.predictions.decoder", head_dense="cls.predictions.transform.dense",
                  head_norm="cls.predictions.transform.LayerNorm", norm="post", causal=False,
                  bases=("bert.", ""))
_ROBERTA = dataclasses.replace(_BERT, family="roberta", head="lm_head.decoder", head_dense="lm_head.dense",
                               head_norm="lm_head.layer_norm", bases=("roberta.", ""))


def _llama_like(family: str, qk_norm: bool = False) -> Structure:
    # q_norm/k_norm are per-head norms inside attention: initialised as norms (gain 1); the diagnostics
    # read the logits' q/k from their outputs (found on the attention module, `diagnostics.targets`)
    del qk_norm
    return Structure(family=family, blocks="layers", q="self_attn.q_proj", k="self_attn.k_proj",
                     v="self_attn.v_proj", attn_out="self_attn.o_proj", mlp_in="mlp.up_proj",
                     mlp_gate="mlp.gate_proj", mlp_out="mlp.down_proj", attn_norm="input_layernorm",
                     mlp_norm="post_attention_layernorm", tok_emb="embed_tokens", final_norm="norm",
                     head="lm_head", norm="pre", causal=True, bases=("model.", ""), rotary=True)


_OURS = Structure(family="deepscalelm", blocks="layers", q="attn.q", k="attn.k", v="attn.v", attn_out="attn.o",
                  mlp_in="ffn.fc1", mlp_out="ffn.fc2", attn_norm="attn.ln", mlp_norm="ffn.ln", tok_emb="tok_emb",
                  pos_emb="pos_emb", type_emb=None, final_norm="ln_f", head="head", norm="pre",
                  bases=("", "decoder.", "encoder."), own=True, stream_in="drop_emb",
                  residuals=(("attn", "attn"), ("ffn", "ffn")), branch="drop")
#: record block of each residual sub-block of a deepscalelm layer, in forward order (the one block-name map)
_OWN_RESIDUALS = (("attn", "attn"), ("cross_attn", "cross"), ("ffn", "ffn"))

for _name, _s in (("gpt2", _GPT2), ("bert", _BERT), ("roberta", _ROBERTA), ("llama", _llama_like("llama")),
                  ("mistral", _llama_like("mistral")), ("qwen2", _llama_like("qwen2")),
                  ("qwen3", _llama_like("qwen3", qk_norm=True))):
    _BY_TYPE[_name] = _s


def _is_ours(model: nn.Module) -> bool:
    from .config import ModelConfig

    return hasattr(model, "stacks") and isinstance(getattr(model, "config", None), ModelConfig)


def own_structure(model: nn.Module) -> list[Resolved]:
    """The resolved stacks of a deepscalelm model (one per stack; the encoder-decoder has two).

    Each stack's `Resolved.stack` is its record stack name; its sites are the embedding dropout,
    every attn / cross / ffn residual block (branch: the block's ``drop``) and, for Pre-LN, ``ln_f``.
    """
    from .config import ModelConfig

    out = []
    ours: Any = model  # a deepscalelm model (see _is_ours): .stacks() and .config are known to exist
    config: ModelConfig = ours.config
    for stack_name, stack in ours.stacks():
        prefix = f"{stack_name}." if stack_name else ""
        cross = bool(len(stack.layers)) and getattr(stack.layers[0], "cross", None) is not None
        residuals = tuple(r for r in _OWN_RESIDUALS if r[0] != "cross_attn" or cross)
        s = dataclasses.replace(_OURS, norm=config.norm, causal=config.arch == "decoder"
                                or stack_name == "decoder", bases=(prefix,),
                                final_norm="ln_f" if stack.ln_f is not None else None,
                                tok_emb=None if config.arch == "vit" else "tok_emb", head=None,
                                pos_emb="pos_emb" if getattr(stack, "pos_emb", None) is not None else None,
                                residuals=residuals)
        out.append(dataclasses.replace(resolve(model, s), stack=stack_name))
    return out


def structure_for(family: str) -> Structure | None:
    """The registered `Structure` whose family is ``family`` (latest registration wins), or None."""
    found = [s for s in (*_BY_TYPE.values(), *_BY_CLASS.values()) if s.family == family]
    return found[-1] if found else None


def registered() -> list[Structure]:
    """Every registered foreign structure, built-ins first (gpt2, bert, roberta, llama, ...), in order."""
    out: list[Structure] = []
    for s in (*_BY_TYPE.values(), *_BY_CLASS.values()):
        if s not in out:
            out.append(s)
    return out


def detect(model: nn.Module) -> Resolved:
    """``model`` resolved with its registered structure (`find_structure`); for a model the registry
    does not know, with the first registered layout its module names fit (a nanoGPT-style model has
    the GPT-2 layout). Raises `DSLMError` (supported families, how to register) when none fits."""
    try:
        found = find_structure(model)
    except DSLMError as exc:
        for st in registered():
            try:
                return resolve(model, st)
            except DSLMError:
                continue
        raise exc from None
    return resolve(model, found)


def stacks_of(model: nn.Module) -> list[Resolved]:
    """Resolved residual stacks of ``model``: `own_structure` for deepscalelm models (unless a
    registration overrides them), else the one stack of `detect`."""
    if _is_ours(model) and not any(k in _BY_CLASS for cls in type(model).__mro__ for k in (cls, cls.__name__)):
        return own_structure(model)
    return [detect(model)]
