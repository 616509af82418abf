"""What ``SummarizationModule`` adds to a Lightning checkpoint, and reads back from one.

Besides Lightning's keys, a checkpoint holds ``lit_qsum`` (the model's backend and task, the sizes OOM recovery
left, NaN/Inf counters, every rank's RNG state and, when saved mid-accumulation, every rank's open optimizer step)
and ``peft_adapter`` (the LoRA weights in peft's format, which ``AdapterCheckpointIO`` writes as the adapter folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_qsum import rng_state
from lit_qsum.distributed import fsdp
from lit_qsum.errors import UserInputError

if TYPE_CHECKING:
    from lit_qsum.module import SummarizationModule

STATE_KEY = "lit_qsum"
ADAPTER_KEY = "peft_adapter"  # popped by AdapterCheckpointIO (checkpoint_io.py), which writes the .adapter folder
MICRO_BATCH_SIZE_KEY = "micro_batch_limit"  # the name checkpoints have always stored the micro-batch size under


def save_training_state(module: SummarizationModule, checkpoint: dict[str, Any]) -> None:
    """Add the module's training state and peft adapter to ``checkpoint``; every rank must call it (it all-gathers)."""
    engine = module.engine
    device = module.trainer.strategy.root_device
    state = checkpoint[STATE_KEY] = {
        "backend": module.loaded.decision.backend,
        "task": module.loaded.task,
        "model_type": module.loaded.model_type,
        # scaled by OOM recovery: a resumed run keeps the sizes that fit
        "accumulate_grad_batches": engine.micro_batch.accumulate_grad_batches,
        MICRO_BATCH_SIZE_KEY: engine.micro_batch.micro_batch_size,
        "nonfinite_total": engine.nonfinite.total,
        "rng_per_rank": _per_rank(module, rng_state.capture(device)),  # same dropout masks after a resume
    }
    open_step = engine.open_step()
    if open_step is not None:  # the same on every rank (counted in a shared unit), so all gather together
        state["open_step_per_rank"] = _per_rank(module, open_step)
    peft_model = module.loaded.model  # unwrapped even where a strategy sharded module.model
    peft_config = getattr(peft_model, "peft_config", None)
    if peft_config:
        from peft import get_peft_model_state_dict  # noqa: PLC0415

        # the weights already in the checkpoint, by the unwrapped model's names (also under FSDP)
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        adapter = get_peft_model_state_dict(peft_model, state_dict=weights)
        checkpoint[ADAPTER_KEY] = {
            "config": peft_config["default"],
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in adapter.items()},
        }


def load_training_state(module: SummarizationModule, checkpoint: dict[str, Any]) -> None:
    """Restore what ``save_training_state`` added (and what older checkpoints hold) into the module and its engine.

    Raises:
        UserInputError: If the checkpoint lacks trainable weights of the module's model.

    """
    missing = {f"model.{n}" for n in fsdp.trainable_state(module.model)} - set(checkpoint.get("state_dict", {}))
    if missing:
        raise UserInputError(
            f"--ckpt_path: the checkpoint lacks {len(missing)} trainable weights of this model "
            f"(e.g. {sorted(missing)[0]}); was it trained with another --model.lora or --model.backend?"
        )
    engine, trainer = module.engine, module.trainer
    state = checkpoint.get(STATE_KEY, {})
    micro_batch = engine.micro_batch
    micro_batch.accumulate_grad_batches = state.get("accumulate_grad_batches", micro_batch.accumulate_grad_batches)
    micro_batch.micro_batch_size = state.get(MICRO_BATCH_SIZE_KEY, micro_batch.micro_batch_size)
    engine.nonfinite.total = state.get("nonfinite_total", 0)
    if trainer.state.fn == "fit":
        rngs = state.get("rng_per_rank") or ([state["rng"]] if "rng" in state else [])
        if rngs:
            rng_state.restore(rngs[_rank_in(module, rngs)], trainer.strategy.root_device)
        open_steps = state.get("open_step_per_rank")
        if open_steps and len(open_steps) != trainer.world_size:
            rank_zero_warn(f"the checkpoint was saved mid-accumulation on {len(open_steps)} device(s), resumed "
                           f"on {trainer.world_size}: that optimizer step's gradients so far are dropped")
        elif open_steps:
            engine.resume_open_step(open_steps[module.global_rank])
    saved = state.get("backend")
    if saved and saved != module.loaded.decision.backend:
        rank_zero_warn(f"checkpoint was trained with backend {saved}, now running {module.loaded.decision.backend}")


def _per_rank(module: SummarizationModule, value: Any) -> list[Any]:
    """``value`` of every rank in rank order (one all-gather; ``[value]`` in one process). All ranks must call it."""
    world_size = module.trainer.world_size
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered
    return [value]


def _rank_in(module: SummarizationModule, per_rank: list[Any]) -> int:
    """This rank's entry of a per-rank list; rank 0's when the checkpoint came from another number of ranks."""
    return module.global_rank if len(per_rank) == module.trainer.world_size else 0
