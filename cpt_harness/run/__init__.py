"""Running work: one ``Job`` type for a sweep, an ablation or a confirmation (``jobs``), the worker loop
(``sweep``), several workers and GPUs (``parallel``), warm workers that serve every job (``pool``) and preparing
model and data ahead of a GPU job (``prepare``).

Layer 11 of the import order, below only the CLI (docs/architecture.md)."""
