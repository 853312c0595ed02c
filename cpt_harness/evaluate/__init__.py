"""What a trial is measured by: held-out losses per document and the metrics built from them (``metrics``,
including forgetting = general loss − the base's), one trial's evaluation at its checkpoints (``evaluation``),
and the per-document results files (``evals``).

Layer 5 of the import order (docs/architecture.md)."""
