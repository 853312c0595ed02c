"""Tokenizing and packing documents into fixed-length blocks (each document followed by a separator), and the
memory-mapped stores they are read from and written to."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from cpt_harness.errors import DataError

# ------------------------------------------------------------------------------------------ packing


def separator_id(tokenizer) -> int:
    """The token placed between documents: <|endoftext|> where the vocabulary has it, else EOS."""
    tok_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(tok_id, int) and tok_id != tokenizer.unk_token_id and tok_id is not None:
        return tok_id
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has neither <|endoftext|> nor an EOS token to separate documents")
    return tokenizer.eos_token_id


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added. A fast tokenizer's backend is called directly, without
    offsets (``encode_batch_fast``: the same ids, 10-15% faster than ``tokenizer(texts)``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def pack(docs: list[str], tokenizer, block_len: int, max_tokens: int | None = None) -> np.ndarray:
    """Tokenize documents, join them with the separator, cut into [n_blocks, block_len] (remainder dropped)."""
    return pack_documents(docs, tokenizer, block_len, max_tokens)[0]


def pack_documents(
    docs: list[str], tokenizer, block_len: int, max_tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``pack``, and beside the blocks the index (in ``docs``) of the document every token belongs to; the
    separator after a document belongs to it. Both int32 [n_blocks, block_len]. The documents that made it
    into the blocks are 0..k-1, in order."""
    sep = separator_id(tokenizer)
    ids: list[int] = []
    owner: list[int] = []
    for start in range(0, len(docs), 256):
        for k, row in enumerate(encode(tokenizer, docs[start : start + 256]), start):
            ids.extend(row)
            ids.append(sep)
            owner.extend([k] * (len(row) + 1))
        if max_tokens is not None and len(ids) >= max_tokens + block_len:
            break
    n_blocks = len(ids) // block_len
    if max_tokens is not None:
        n_blocks = min(n_blocks, max(1, max_tokens // block_len))
    n = n_blocks * block_len
    return (
        np.asarray(ids[:n], dtype=np.int32).reshape(n_blocks, block_len),
        np.asarray(owner[:n], dtype=np.int32).reshape(n_blocks, block_len),
    )


_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # Linux, macOS; elsewhere the pages stay mapped


class _Store:
    """The documents of an Arrow stream file, memory-mapped. Read in shuffled order, a pass touches pages all over
    the file, and a touched page counts in the process's RSS until unmapped: ``take`` gives those pages back after
    each read (they stay in the page cache, so the next read is a minor fault), and the RSS of a build stays flat
    however large the corpus."""

    def __init__(self, path: Path):
        import pyarrow as pa

        with open(path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        # zero-copy: the batches' buffers point into the map
        self._batches = [b.column(0) for b in pa.ipc.open_stream(pa.py_buffer(self._map))]
        self._starts = np.cumsum([0] + [len(b) for b in self._batches])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, indices: np.ndarray) -> list[str]:
        # Document by document: Arrow's take on a chunked column first joins every chunk (a heap copy of the corpus)
        batch = np.searchsorted(self._starts, indices, side="right") - 1
        texts = [self._batches[b][i].as_py() for b, i in zip(batch.tolist(), (indices - self._starts[batch]).tolist())]
        if _DONTNEED is not None:
            self._map.madvise(_DONTNEED)  # this process's page table only: the file and the page cache are untouched
        return texts


class _Documents:
    """Documents of a memory-mapped Arrow store in a given order, read a slice at a time (``pack_documents``
    takes it like a list)."""

    def __init__(self, store: _Store, order: np.ndarray):
        self.store, self.order = store, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, part: slice) -> list[str]:
        return self.store.take(self.order[part])


NPY_HEADER = 128  # bytes: a .npy header of fixed size, written last, once the number of blocks is known


class BlockWriter:
    """Token ids appended to a .npy file of [n_blocks, block_len] int32 blocks as they come (the remainder
    that fills no block is cut off at ``close``): a corpus never sits in memory, and the file is what every
    worker memory-maps."""

    def __init__(self, path: Path, block_len: int):
        self.path, self.block_len, self.tokens = path, block_len, 0
        self.fh = open(path, "wb")
        self.fh.write(b"\0" * NPY_HEADER)

    def write(self, ids: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
        self.tokens += len(ids)

    def cut(self) -> int:
        """End a source here: the remainder that fills no block is dropped (no block spans two sources); the
        number of blocks written so far."""
        n_blocks = self.tokens // self.block_len
        self.fh.truncate(NPY_HEADER + n_blocks * self.block_len * 4)
        self.fh.seek(NPY_HEADER + n_blocks * self.block_len * 4)
        self.tokens = n_blocks * self.block_len
        return n_blocks

    def close(self) -> int:
        """The number of blocks written."""
        n_blocks = self.tokens // self.block_len
        self.fh.truncate(NPY_HEADER + n_blocks * self.block_len * 4)
        self.fh.seek(0)
        self.fh.write(_npy_header((n_blocks, self.block_len)))
        self.fh.close()
        return n_blocks


def _npy_header(shape: tuple[int, int]) -> bytes:
    """A version 1.0 .npy header for little-endian int32 of ``shape``, padded to NPY_HEADER bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype("<i4")), "fortran_order": False, "shape": shape})
    header = text.ljust(NPY_HEADER - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")
