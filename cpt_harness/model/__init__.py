"""The base model: resolving ``model.name`` to a local folder (``resolve``: built-ins fetched, converted, cached,
sha256-checked), naming its modules (``modules``: LoRA targets and the embeddings), and the training backends
(``backends``: peft anywhere, unsloth on a CUDA GPU).

Layer 4 of the import order (docs/architecture.md)."""
