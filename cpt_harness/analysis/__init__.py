"""What the trials say: the ablation designs (``ablation``), the confirmation of a sweep's best settings
(``confirm``), the learning–forgetting frontier (``frontier``), the claims of the CPT guidance (``claims``, and
``levels`` for the shared-arms design judged over match levels) and the statistics beneath them (``stats``).

Layer 8 of the import order (docs/architecture.md)."""
