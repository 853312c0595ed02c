"""One trial's training: its parameters (``params``: TrialParams and the CPT rules that derive them), the loop
(``loop``), the batches (``batches``), the optimizer groups and fp32 masters (``optim``), the audit of what
trains (``audit``), the LR schedule and eval steps (``schedule``), saved state for resume (``resume``), gradient
checkpointing's choice (``checkpointing``) and healing the base (``heal``).

The package's face imports nothing: ``schedule`` and ``params`` are torch-free and read by validation and the
search space, the others import torch. Layer 6 of the import order (docs/architecture.md)."""
