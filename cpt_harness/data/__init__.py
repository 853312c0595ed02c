"""The corpora: where documents come from and how they are checked and read (``sources``, ``fetched``), the
held-out near-copies dropped (``contamination``), tokenizing and packing into blocks (``packing``, ``workers``),
and the prepared, cached set every trial of a study reads (``corpora``: ``prepare`` -> ``Corpora``).

Layer 3 of the import order (docs/architecture.md). This face re-exports what the stages above use."""

from cpt_harness.config.load import text_problem
from cpt_harness.data import fetched
from cpt_harness.data.build import num_proc
from cpt_harness.data.contamination import drop_contaminated, ngram_hashes, not_contaminated, unique_hashes
from cpt_harness.data.corpora import (
    ARRAYS,
    Corpora,
    EvalSet,
    cache_folder,
    cache_key,
    prepare,
    replayed_corpora,
    source_fingerprint,
    validation_blocks,
)
from cpt_harness.data.packing import encode, pack, pack_documents, separator_id
from cpt_harness.data.sources import (
    BUILTIN_CORPORA,
    CORPORA_DIR,
    FILE_SUFFIXES,
    HEAD_BYTES,
    check_domain,
    check_general,
    check_source,
    corpus_names,
    iter_documents,
    read_documents,
    source_label,
    split_documents,
    split_general,
)
from cpt_harness.errors import DataError

__all__ = [
    "ARRAYS",
    "BUILTIN_CORPORA",
    "CORPORA_DIR",
    "Corpora",
    "DataError",
    "EvalSet",
    "FILE_SUFFIXES",
    "HEAD_BYTES",
    "cache_folder",
    "cache_key",
    "check_domain",
    "check_general",
    "check_source",
    "corpus_names",
    "drop_contaminated",
    "encode",
    "fetched",
    "iter_documents",
    "ngram_hashes",
    "not_contaminated",
    "num_proc",
    "pack",
    "pack_documents",
    "prepare",
    "read_documents",
    "replayed_corpora",
    "separator_id",
    "source_fingerprint",
    "source_label",
    "split_documents",
    "split_general",
    "text_problem",
    "unique_hashes",
    "validation_blocks",
]
