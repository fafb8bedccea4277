"""Data for training: text corpora (built-in Tiny Shakespeare, files, directories, Penn Treebank),
tokenizers (byte, word, BPE), memmapped token streams, objectives and Fashion-MNIST images.

Torch-free: batches are numpy arrays; `deepscalelm.train` moves them to tensors.
"""

from .objectives import (
                         DEFAULT_OBJECTIVE,
                         OBJECTIVES,
                         CausalLM,
                         ImageClassification,
                         MaskedLM,
                         SpanCorruption,
                         bits_per_byte,
                         special_tokens,
)
from .stream import TokenStream, encode_split, open_stream
from .text import BUILTIN, Corpus, load_corpus
from .tokenizer import TOKENIZERS, Tokenizer, build_tokenizer, load_tokenizer

__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVES", "CausalLM", "MaskedLM", "SpanCorruption",
           "ImageClassification", "bits_per_byte", "special_tokens", "TokenStream", "encode_split",
           "open_stream", "BUILTIN", "Corpus", "load_corpus", "TOKENIZERS", "Tokenizer",
           "build_tokenizer", "load_tokenizer"]
