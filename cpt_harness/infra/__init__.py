"""Infrastructure every stage may use, knowing nothing of training: storage URLs and their secrets
(``urls``), the cache folder and its build locks (``cache``), what this machine runs (``environment``), and
Weights & Biases (``tracking`` writes runs, ``wandb_files`` reads the offline run files back).

Layer 2 of the import order (docs/architecture.md): above ``errors`` and ``config``, below everything else."""
