"""Several GPUs through Lightning's own strategies: DDP gradient sync done per optimizer step, FSDP for (Q)LoRA."""
