"""lit-qsum: fine-tune dialogue summarizers with 4-bit QLoRA on Lightning."""

__version__ = "0.1.0"
