"""What a person reads: terminal tables (``tables``), the report folders (``report_files`` for sweeps and
factorial ablations, ``levels_report`` for shared-arms ablations), exports with a model card (``export``,
``model_card``), optuna-dashboard (``dashboard``) and the W&B workspace (``workspace``).

Layer 10 of the import order (docs/architecture.md)."""
