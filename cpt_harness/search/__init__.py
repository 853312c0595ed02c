"""Optuna: the search space (``space``), samplers and pruners chosen by name (``samplers``), opening and
reading studies (``study``: storage, fingerprints, result queries), the trial protocol workers share
(``trials``), pruning at eval checkpoints (``pruning``) and the objective a trial runs (``objective``).

Layer 7 of the import order (docs/architecture.md)."""
