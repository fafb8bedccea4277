"""The parameter-naming contract shared by the theory, the schemes and the PyTorch models.

A scheme assigns an initial variance to every *weight* by the name it has in
``model.named_parameters()`` and a (lambda, beta) pair to every *residual merge* by the name of the
block module. Biases are always 0; LayerNorm gains 1 and shifts 0. Listing the names here, in pure
Python, keeps the theory free of torch while letting `deepscalelm.apply_scheme` be a plain join.

Weights, with (rows, cols) = PyTorch shape (for linear layers: (fan_out, fan_in)):

* embeddings: ``{stack}tok_emb.weight`` (V, d), ``{stack}pos_emb.weight`` (L, d) (only for
  ``position="learned"``: rotary and absent positions have no table),
  ``{stack}type_emb.weight`` (n_token_types, d) when ``n_token_types > 0``;
  ViT: ``patch_emb.weight`` (d, C*P*P), ``cls_token`` (1, d), ``pos_emb.weight`` (L, d) (learned only).
* per layer i (0-based, as in ``model.layers[i]``):
  ``{stack}layers.{i}.attn.{q,o}.weight`` (d, d), ``{stack}layers.{i}.attn.{k,v}.weight``
  (n_kv_heads * d_head, d) (= (d, d) without grouped-query attention);
  decoder of an encoder-decoder: ``decoder.layers.{i}.cross.{q,k,v,o}.weight`` (d, d);
  ``{stack}layers.{i}.ffn.fc1.weight`` (d_ff, d), ``{stack}layers.{i}.ffn.fc2.weight`` (d, d_ff);
  gated activations (swiglu, geglu) also ``{stack}layers.{i}.ffn.fc3.weight`` (d_ff, d), the up
  projection W3 (fc1 is the gate W1, fc2 the down projection W2: fc2(act(fc1 x) * fc3 x)).
* heads: encoder MLM ``mlm_dense.weight`` (d, d); an untied LM head ``head.weight`` (V, d);
  ViT classifier ``head.weight`` (n_classes, d).

``{stack}`` is ``""`` for single-stack models and ``"encoder."`` / ``"decoder."`` for the two stacks
of an encoder-decoder (whose untied head is the top-level ``head.weight``).

Merges: ``{stack}layers.{i}.attn``, ``{stack}layers.{i}.cross`` and ``{stack}layers.{i}.ffn``.
Scales: ``head_scale``, a fixed multiplier on the hidden state before a tied output embedding.
"""

from __future__ import annotations

from ..config import ModelConfig


def layer_blocks(config: ModelConfig, stack: str) -> tuple[str, ...]:
    """Residual blocks of one layer of ``stack`` in forward order."""
    if config.arch == "encoder-decoder" and stack == "decoder.":
        return ("attn", "cross", "ffn")
    return ("attn", "ffn")


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """Every weight of the model built from ``config``: name -> (rows, cols) as in PyTorch."""
    d, f, L, V = config.d_model, config.ffn_dim, config.seq_len, config.vocab_size
    learned = config.position == "learned"
    kv = config.kv_heads * config.d_head   # rows of the K and V projections
    shapes: dict[str, tuple[int, int]] = {}
    for stack, n_layers, _causal in config.stacks():
        if config.arch == "vit":
            c = config.channels * config.patch_size ** 2
            shapes["patch_emb.weight"] = (d, c)
            shapes["cls_token"] = (1, d)
            if learned:
                shapes["pos_emb.weight"] = (L, d)
        else:
            shapes[f"{stack}tok_emb.weight"] = (V, d)
            if learned:
                shapes[f"{stack}pos_emb.weight"] = (L, d)
            if config.n_token_types > 0 and config.arch == "encoder":
                shapes[f"{stack}type_emb.weight"] = (config.n_token_types, d)
        for i in range(n_layers):
            for block in layer_blocks(config, stack):
                if block == "ffn":
                    shapes[f"{stack}layers.{i}.ffn.fc1.weight"] = (f, d)
                    if config.gated:
                        shapes[f"{stack}layers.{i}.ffn.fc3.weight"] = (f, d)
                    shapes[f"{stack}layers.{i}.ffn.fc2.weight"] = (d, f)
                else:
                    for w in "qkvo":
                        shapes[f"{stack}layers.{i}.{block}.{w}.weight"] = (kv, d) if w in "kv" else (d, d)
    if config.arch == "encoder":
        shapes["mlm_dense.weight"] = (d, d)
    if config.arch == "vit":
        shapes["head.weight"] = (config.n_classes, d)
    elif not config.tie_embeddings:
        shapes["head.weight"] = (V, d)
    return shapes


def merge_names(config: ModelConfig) -> list[str]:
    """Every residual merge of the model, in forward order (encoder stack first)."""
    names = []
    for stack, n_layers, _causal in config.stacks():
        for i in range(n_layers):
            names += [f"{stack}layers.{i}.{b}" for b in layer_blocks(config, stack)]
    return names


def has_type_table(config: ModelConfig) -> bool:
    """Whether the model has a token-type table (encoders with ``n_token_types > 0``)."""
    return config.n_token_types > 0 and config.arch == "encoder"


def n_embedding_tables(config: ModelConfig) -> int:
    """Number of tables summed into the embedding output: token (ViT: patch projection + class
    token), the learned position table (``position="learned"`` only) and the token-type table."""
    pos = 1 if config.position == "learned" else 0
    if config.arch == "vit":
        return 1 + pos
    return 1 + pos + (1 if has_type_table(config) else 0)


__all__ = ["weight_shapes", "merge_names", "layer_blocks", "n_embedding_tables", "has_type_table"]
