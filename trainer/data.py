"""Text corpora → token windows, split by document into train, select and test.

Sources:
- ``wiki``: the 206 Wikipedia pages shipped in the gensim wheel (markup stripped with gensim's ``filter_wiki``, then
  only prose lines kept: headings, table cells and list fragments are dropped); 104 pages keep enough prose to
  count as documents (84 train, 10 select, 10 test);
- ``news``: the Lee corpus of 300 ABC news articles, also in the gensim wheel;
- a local ``.txt`` (documents separated by blank lines) or ``.jsonl`` (one ``{"text": ...}`` per line) file;
- ``wikitext2``, ``c4``, ``ptb`` through ``datasets`` (for users with a hub; nothing is fetched for the others).
Of every ten documents, eight train (gradients and calibration), one selects (best step, early stopping, which
prompt to serve) and one tests (every figure a user sees), so each split spans the corpus and no document straddles
two. Each split's documents are joined with the EOS token and cut into non-overlapping windows of ``seq_len``
tokens. A capped select or test set takes evenly spaced windows, so a few long documents cannot dominate it.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ctpreg.registry.errors import InvalidInput, MissingExtra
from ctpreg.registry.prompted import cut_windows

SPLIT_EVERY = 10  # of each SPLIT_EVERY documents: all but two train, then one selects and one tests
SELECT, TEST = "select", "test"
SPLITS = ("train", SELECT, TEST)
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
# (dataset, load_dataset keyword arguments, text field). C4's English train split is hundreds of GB: like GPTQ's own
# evaluation code, read its first shard only (356,317 documents, ~320 MB compressed).
HUB_DATASETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "wikitext2": ("wikitext", {"name": "wikitext-2-raw-v1"}, "text"),
    "ptb": ("ptb_text_only", {"name": "penn_treebank"}, "sentence"),
    "c4": ("allenai/c4", {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}}, "text"),
}
MIN_WIKI_CHARS = 500
MIN_PROSE_WORDS = 8  # shorter wiki lines are headings, table cells and list items, not running text


@dataclass(frozen=True)
class Corpus:
    name: str
    documents: tuple[str, ...]

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(hashlib.sha256(doc.encode()).digest())
        return digest.hexdigest()

    def split(self) -> Splits:
        parts: dict[str, list[str]] = {name: [] for name in SPLITS}
        for index, doc in enumerate(self.documents):
            parts[_split_of(index)].append(doc)
        if not parts[TEST] or not parts[SELECT]:
            raise InvalidInput(
                f"{self.name} has {len(self.documents)} documents; train, select and test need at least "
                f"{SPLIT_EVERY} (documents are separated by blank lines in a .txt file)"
            )
        return Splits(**parts)


def _split_of(index: int) -> str:
    position = index % SPLIT_EVERY
    return SELECT if position == SPLIT_EVERY - 2 else TEST if position == SPLIT_EVERY - 1 else "train"


class Splits(NamedTuple):
    """A corpus' documents by split; no document is in two."""

    train: list[str]
    select: list[str]
    test: list[str]


@dataclass(frozen=True)
class TokenWindows:
    """Non-overlapping token windows [N, seq_len] per split, and a hash that pins tokenizer, text and cut."""

    train: torch.Tensor
    select: torch.Tensor
    test: torch.Tensor
    seq_len: int
    corpus: str

    @cached_property
    def data_hash(self) -> str:
        digest = hashlib.sha256(f"{self.corpus}/{self.seq_len}".encode())
        for windows in (self.train, self.select, self.test):
            digest.update(windows.numpy().tobytes())
        return digest.hexdigest()


def _gensim_data(filename: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    for folder in spec.submodule_search_locations if spec else []:
        path = Path(folder) / "test" / "test_data" / filename
        if path.is_file():
            return path
    raise MissingExtra("the packaged corpora ship in the gensim wheel: pip install gensim==4.4.0")


@lru_cache(maxsize=None)  # parsing the bz2 dump takes ~10 s; train, calibration and validation all read it
def _wiki() -> Corpus:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    documents = []
    with bz2.open(_gensim_data(WIKI_FILE)) as handle:
        for _title, text, _pageid in extract_pages(handle, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            text = filter_wiki(text).replace("'''", "").replace("''", "")  # bold/italic quotes survive filter_wiki
            clean = "\n".join(line.strip() for line in text.splitlines() if len(line.split()) >= MIN_PROSE_WORDS)
            if len(clean) >= MIN_WIKI_CHARS:
                documents.append(clean)
    return Corpus("wiki", tuple(documents))


@lru_cache(maxsize=None)
def _news() -> Corpus:
    lines = _gensim_data(NEWS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    return Corpus("news", tuple(line.strip() for line in lines if line.strip()))


def _local(path: Path) -> Corpus:
    if not path.is_file():
        raise InvalidInput(f"text file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                documents.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InvalidInput(f"{path}:{number}: expected a JSON object with a 'text' field") from None
    else:
        documents = [block.strip() for block in text.split("\n\n") if block.strip()]
    if not documents:
        raise InvalidInput(f"{path} holds no text")
    return Corpus(path.stem, tuple(documents))


def _hub(name: str) -> Corpus:
    from datasets import load_dataset

    dataset, options, field = HUB_DATASETS[name]
    split = load_dataset(dataset, split="train", **options)
    documents = tuple(row[field] for row in split if row[field].strip())
    return Corpus(name, documents)


PACKAGED = {"wiki": _wiki, "news": _news}


def load_corpus(name_or_path: str) -> Corpus:
    """A packaged corpus name, a hub dataset name, or a path to a .txt/.jsonl file."""
    if name_or_path in PACKAGED:
        return PACKAGED[name_or_path]()
    if name_or_path in HUB_DATASETS:
        return _hub(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix in {".txt", ".jsonl"} or path.exists():
        return _local(path)
    known = ", ".join([*PACKAGED, *HUB_DATASETS])
    raise InvalidInput(f"unknown dataset {name_or_path!r}: use {known}, or a .txt/.jsonl file")


def make_windows(
    tokenizer: Any,
    corpus: Corpus,
    *,
    seq_len: int,
    max_train: int | None = None,
    max_select: int | None = None,
    max_test: int | None = None,
) -> TokenWindows:
    """Tokenize each split and cut it into windows; fail clearly when a split is shorter than one window."""
    return TokenWindows(
        train=split_windows(tokenizer, corpus, "train", seq_len=seq_len, limit=max_train),
        select=split_windows(tokenizer, corpus, SELECT, seq_len=seq_len, limit=max_select),
        test=split_windows(tokenizer, corpus, TEST, seq_len=seq_len, limit=max_test),
        seq_len=seq_len, corpus=corpus.name,
    )


def split_windows(tokenizer: Any, corpus: Corpus, split: str, *, seq_len: int, limit: int | None) -> torch.Tensor:
    """One split's windows alone (evenly spaced when capped), exactly as ``make_windows`` cuts them."""
    if seq_len < 2:
        raise InvalidInput("seq_len must be at least 2 (one context token and one scored token)")
    docs = getattr(corpus.split(), split)
    windows = cut_windows(tokenizer, docs, seq_len, limit if split == "train" else None, f"{corpus.name} {split}")
    return windows if split == "train" else _spread(windows, limit)


def _spread(windows: torch.Tensor, limit: int | None) -> torch.Tensor:
    if limit is None or windows.shape[0] <= limit:
        return windows
    index = torch.linspace(0, windows.shape[0] - 1, limit).round().long()
    return windows[index]


def all_windows(tokenizer: Any, corpus: Corpus, *, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """Every document, unsplit (for evaluating on a user's own text file); capped at ``limit`` windows evenly spaced
    through the whole file, as a split's are, so the figure does not describe its first pages alone."""
    return _spread(cut_windows(tokenizer, list(corpus.documents), seq_len, None, corpus.name), limit)
