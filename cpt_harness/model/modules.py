"""Parameter and module names, the same whichever backend built the model: which weights are LoRA's, which are
the embeddings (trained in full, in their own optimizer group), and the weight a PEFT wrapper trains in place of
the original module's. The training loop builds its optimizer groups with these; the audit checks them; the
backends name the embeddings to train with them. Nothing here imports torch."""

from __future__ import annotations

LORA_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def embedding_module_names(model) -> tuple[str, ...]:
    """Short names of the input embedding and output head (``embed_tokens``, ``lm_head`` for Llama)."""
    wanted = [model.get_input_embeddings(), model.get_output_embeddings()]
    names = []
    for target in wanted:
        for name, module in model.named_modules():
            if module is target:
                names.append(name.rsplit(".", 1)[-1])
                break
    return tuple(names)


def classify(name: str, embedding_names: tuple[str, ...]) -> str:
    """'lora', 'embedding' or 'other' (a base weight) for a parameter name."""
    if any(f".{m}." in name for m in LORA_MARKERS):
        return "lora"
    parts = name.split(".")
    if any(e in parts for e in embedding_names):
        return "embedding"
    return "other"


def active_weight(module):
    """The weight a (possibly PEFT-wrapped, ``modules_to_save``) embedding or head module uses in forward."""
    to_save = getattr(module, "modules_to_save", None)
    if to_save is not None and len(to_save) > 0:
        adapter = getattr(module, "active_adapter", None) or next(iter(to_save.keys()))
        adapter = adapter[0] if isinstance(adapter, (list, tuple)) else adapter
        return to_save[adapter].weight
    return module.weight
