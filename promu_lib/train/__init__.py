"""Training: shared utilities (``common``), fine-tuning (``finetune``) and their CLI."""
