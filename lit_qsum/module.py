"""The LightningModule: trains a summarizer (LoRA / QLoRA / full), generates, scores ROUGE, checkpoints adapters.

Read top to bottom: ``__init__`` keeps settings, ``setup`` builds the model through
``lit_qsum.backends.loader`` (which alone knows peft, bitsandbytes and unsloth), then the steps,
generation, optimizers and checkpointing.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_qsum.backends.choice import BackendRequest
from lit_qsum.backends.hf import load_config, task_of
from lit_qsum.backends.loader import LoadedModel, ModelSpec, load_model
from lit_qsum.errors import UserInputError
from lit_qsum.metrics.rouge import MultiRef, RougeTokenizer, SummaryRouge
from lit_qsum.settings import GenerationSettings, LoraSettings, QuantizationSettings

T5_FAMILY = ("t5", "mt5", "umt5", "longt5")


def split_batch(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Cut a collated batch (tensors and lists along dim 0) into chunks of at most ``size`` examples."""
    n = len(batch["index"])

    def along_batch(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return value.dim() > 0 and value.shape[0] == n
        return isinstance(value, list) and len(value) == n

    chunks = []
    for start in range(0, n, size):
        chunk = {k: v[start : start + size] if along_batch(v) else v for k, v in batch.items()}
        if "num_tokens" in batch and "attention_mask" in chunk:
            tokens = chunk["attention_mask"].sum()
            if "labels" in chunk and "prompt_input_ids" not in chunk:  # seq2seq: summary tokens count too
                tokens = tokens + (chunk["labels"] != -100).sum()
            chunk["num_tokens"] = tokens
        chunks.append(chunk)
    return chunks


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)


class SummarizationModule(L.LightningModule):
    """Fine-tunes a seq2seq or decoder-only summarizer with LoRA adapters on a (4-bit) frozen base."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict | None = None,
        tokenizer: str | None = None,
        backend: BackendRequest = "auto",
        lora: LoraSettings | None = None,
        quantization: QuantizationSettings | None = None,
        gradient_checkpointing: bool = False,
        generation: GenerationSettings | None = None,
        rouge_tokenizer: RougeTokenizer = "default",
        rouge_multi_ref: MultiRef = "best",
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        warmup_ratio: float = 0.05,
        lr_decay: Literal["linear", "cosine", "constant"] = "linear",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = 1.0,
        max_consecutive_nonfinite: int = 5,
        init_seed: int = 0,
        max_seq_length: int = 2048,
        num_logged_examples: int = 4,
    ) -> None:
        """
        Args:
            model_name_or_path: Hub name or local folder of a seq2seq (T5, BART...) or causal LM checkpoint.
            model_config: Instead of a checkpoint, build a random-init model from this config (offline demo, tests).
            tokenizer: Tokenizer hub name or path; None = the checkpoint's; ``lit_qsum:demo`` = bundled-data BPE.
            backend: auto picks unsloth > qlora > lora by what the machine supports; or force one (full = no LoRA).
            lora: LoRA adapter shape (rank, alpha, dropout, targets, per-module patterns).
            quantization: bitsandbytes 4-bit settings for the qlora/unsloth backends.
            gradient_checkpointing: Recompute activations in backward: much less memory, ~30% slower steps.
            generation: Beam search and length settings for validation/test/predict summaries.
            rouge_tokenizer: How ROUGE splits text: default (Unicode words), whitespace, char, morpheme (Kiwi).
            rouge_multi_ref: With several references: best (max per metric) or mean.
            optimizer: Optimizer over the trainable parameters (LightningCLI: class_path + init_args).
            scheduler: LR scheduler; None = linear/cosine decay with warmup from ``warmup_ratio``/``lr_decay``.
            warmup_ratio: Fraction of the total optimizer steps spent warming the LR up from 0.
            lr_decay: Shape of the built-in schedule after warmup.
            accumulate_grad_batches: Micro-batches per optimizer step (here, not on the Trainer: the module
                steps the optimizer itself so OOM recovery can split a batch and keep the effective batch).
            gradient_clip_val: Clip the gradient norm to this (None = no clipping).
            max_consecutive_nonfinite: Stop after this many NaN/Inf losses in a row (each is skipped, not stepped).
            init_seed: Seed of random-init weights built from ``model_config`` (and of LoRA init).
            max_seq_length: Longest sequence the unsloth backend prepares RoPE caches for.
            num_logged_examples: Validation examples (dialogue, reference, prediction) logged as text each time.
        """
        super().__init__()
        if not 0.0 <= warmup_ratio < 1.0:
            raise UserInputError(f"--model.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if accumulate_grad_batches < 1:
            raise UserInputError(f"--model.accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise UserInputError(f"--model.gradient_clip_val must be > 0 or null, got {gradient_clip_val}")
        if max_consecutive_nonfinite < 1:
            raise UserInputError(f"--model.max_consecutive_nonfinite must be >= 1, got {max_consecutive_nonfinite}")
        self.spec = ModelSpec(
            model_name_or_path=model_name_or_path,
            model_config=model_config,
            tokenizer=tokenizer,
            backend=backend,
            lora=lora or LoraSettings(),
            quantization=quantization or QuantizationSettings(),
            gradient_checkpointing=gradient_checkpointing,
            init_seed=init_seed,
            max_seq_length=max_seq_length,
        )
        if (model_name_or_path is None) == (model_config is None):
            raise UserInputError("set exactly one of --model.model_name_or_path and --model.model_config")
        self.generation = generation or GenerationSettings()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.warmup_ratio = warmup_ratio
        self.lr_decay = lr_decay
        self.num_logged_examples = num_logged_examples
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        # manual optimization: a training step may split its batch after an OOM (see _backward_chunks)
        self.automatic_optimization = False
        self.micro_batch_limit: int | None = None  # set by OOM recovery: the largest chunk that fits
        self.micro_batches_done = 0  # since the last optimizer step
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.val_rouge = SummaryRouge(tokenizer=rouge_tokenizer, multi_ref=rouge_multi_ref)
        self.test_rouge = SummaryRouge(tokenizer=rouge_tokenizer, multi_ref=rouge_multi_ref)
        self.model: torch.nn.Module | None = None
        self.loaded: LoadedModel | None = None
        self.run_facts: dict[str, Any] = {}
        self._val_examples: list[tuple[str, str, str]] = []
        # the checkpoint holds only trainable weights; the frozen base is rebuilt from its source
        self.strict_loading = False

    # ---- model building -------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        trainer = self.trainer
        device = trainer.strategy.root_device
        self.loaded = load_model(self.spec, device=device, num_devices=trainer.world_size)
        self.model = self.loaded.model
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps submodule modes as found
        self._check_precision(str(trainer.precision))
        decision = self.loaded.decision
        rank_zero_info(decision.report())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        rank_zero_info(
            f"model: {self.loaded.model_type} ({self.loaded.task}), {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / max(total, 1):.2f}%), compute dtype {self.loaded.compute_dtype}"
        )
        # what was decided at run time, for the TensorBoard HPARAMS tab; kept out of self.hparams, which
        # LightningCLI feeds back as constructor arguments when a checkpoint is given
        self.run_facts = {
            "backend_chosen": decision.backend,
            "backend_reasons": " | ".join(decision.reasons),
            "task": self.loaded.task,
            "trainable_params": trainable,
            "gpu": self.loaded.facts.gpu_name or "none",
        }
        if trainer.logger is not None:
            trainer.logger.log_hyperparams(self.run_facts)

    def _check_precision(self, precision: str) -> None:
        if "16" in precision and "bf16" not in precision and self.loaded.model_type in T5_FAMILY:
            raise UserInputError(
                f"--trainer.precision {precision}: T5-family models overflow in float16 (NaN losses). "
                "Use bf16-mixed on GPUs that support it (Ampere or newer), else 32-true."
            )

    def resolve_task(self) -> str:
        """seq2seq or causal, read from the config alone (cheap: no weights), so the data module can tokenize."""
        if self.spec.model_config is not None:
            model_type = self.spec.model_config.get("model_type")
            if not model_type:
                raise UserInputError("--model.model_config needs a model_type (e.g. t5, bart, llama)")
            from transformers import AutoConfig  # noqa: PLC0415

            try:
                return task_of(AutoConfig.for_model(model_type))
            except ValueError as err:
                raise UserInputError(f"--model.model_config: unknown model_type {model_type!r}") from err
        return task_of(load_config(self.spec.model_name_or_path))

    @property
    def tokenizer(self):
        """The tokenizer the model was built with (available after ``setup``)."""
        return self.loaded.tokenizer

    @property
    def task(self) -> str:
        """seq2seq or causal (available after ``setup``)."""
        return self.loaded.task

    # ---- steps ----------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        losses = self._backward_chunks(batch)
        self._maybe_optimizer_step()
        if not losses:
            return None
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["index"]))
        return loss

    def _backward_chunks(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Forward + backward, in chunks of at most ``micro_batch_limit``; an OOM halves the chunk and retries.

        Lightning can't retry a step from a callback (an exception in ``training_step`` leaves the fit
        loop), so the retry lives here: the gradients of the failed chunk are rolled back, an
        ``OOMBatchSizeScaler`` callback (if present) decides the new sizes, and the same samples are
        run again in smaller chunks. Without that callback an OOM propagates as usual.
        """
        size = len(batch["index"])
        if self.micro_batch_limit is not None and size > self.micro_batch_limit:
            return [loss for part in split_batch(batch, self.micro_batch_limit) for loss in self._backward_chunks(part)]
        handler = self._oom_handler()
        snapshot = self._grad_snapshot() if handler is not None and self.micro_batches_done else None
        try:
            loss = self._loss(batch)
            finite = bool(torch.isfinite(loss))
            if finite:
                self.manual_backward(loss / self.accumulate_grad_batches)
        except torch.cuda.OutOfMemoryError as err:
            if handler is None:
                raise
            loss = None  # drop the failed step's activations before measuring what is free
            self._restore_grads(snapshot)
            handler(self.trainer, self, size, err)
            return self._backward_chunks(batch)
        self.micro_batches_done += 1
        if not finite:
            self._on_nonfinite(loss)
            return []
        self.nonfinite_in_a_row = 0
        return [loss.detach()]

    def _oom_handler(self):
        trainer = self._trainer
        if trainer is None:
            return None
        return next((cb.handle_train_oom for cb in trainer.callbacks if hasattr(cb, "handle_train_oom")), None)

    def _grad_snapshot(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else p.grad.clone() for p in self._trainable()]

    def _restore_grads(self, snapshot: list[torch.Tensor | None] | None) -> None:
        for i, p in enumerate(self._trainable()):
            p.grad = None if snapshot is None else snapshot[i]

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _on_nonfinite(self, loss: torch.Tensor) -> None:
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        self.log("train/nonfinite_losses", float(self.nonfinite_total), on_step=True, on_epoch=False)
        rank_zero_warn(f"step {self.global_step}: loss is {loss.item()}; this micro-batch is skipped")
        if self.nonfinite_in_a_row >= self.max_consecutive_nonfinite:
            raise UserInputError(
                f"{self.nonfinite_in_a_row} non-finite losses in a row (NaN/Inf), stopping. Usual causes: "
                "--trainer.precision 16-mixed with a T5-family model (use bf16-mixed or 32-true), a learning rate "
                "too high for this model (lower --model.optimizer.init_args.lr), or no --model.gradient_clip_val."
            )

    def _maybe_optimizer_step(self) -> None:
        last = self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self.micro_batches_done < self.accumulate_grad_batches and not last:
            return
        optimizer = self.optimizers()
        if any(p.grad is not None for p in self._trainable()):
            if self.gradient_clip_val:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
        self.micro_batches_done = 0

    @override
    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        # the data module tracks how far into the epoch we are, for mid-epoch resumes
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "mark_consumed"):
            datamodule.mark_consumed(len(batch["index"]))

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val", self.val_rouge)

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test", self.test_rouge)

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, prefix: str, rouge: SummaryRouge) -> None:
        size = len(batch["index"])
        self.log(f"{prefix}/loss", self._loss(batch), sync_dist=True, batch_size=size, prog_bar=prefix == "val")
        predictions = self.generate(batch)
        rouge.update(predictions, batch["references"])
        if prefix == "val" and len(self._val_examples) < self.num_logged_examples:
            for example in zip(batch["dialogue"], batch["references"], predictions):
                self._val_examples.append((example[0], example[1][0], example[2]))
        if prefix == "val" and batch_idx == 0 and predictions:
            rank_zero_info(f"example summary: {predictions[0]!r} | reference: {batch['references'][0][0]!r}")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_rouge("val", self.val_rouge)
        self._log_examples()

    @override
    def on_test_epoch_end(self) -> None:
        self._log_rouge("test", self.test_rouge)

    def _log_rouge(self, prefix: str, rouge: SummaryRouge) -> None:
        scores = rouge.compute()
        for name, value in scores.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "rougeL", sync_dist=False)
        rouge.reset()

    def _log_examples(self) -> None:
        examples, self._val_examples = self._val_examples, []
        experiment = getattr(self.logger, "experiment", None)
        if not examples or self.trainer.sanity_checking or not hasattr(experiment, "add_text"):
            return
        rows = ["| dialogue | reference | prediction |", "|---|---|---|"]
        for dialogue, reference, prediction in examples:
            cells = [c.replace("|", "\\|").replace("\n", "<br>") for c in (dialogue, reference, prediction)]
            rows.append("| " + " | ".join(cells) + " |")
        experiment.add_text("val/examples", "\n".join(rows), global_step=self.global_step)

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, list]:
        return {"index": batch["index"].tolist(), "fname": list(batch["fname"]), "summary": self.generate(batch)}

    # ---- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> list[str]:
        """Summaries for a batch: beam search per ``generation``; causal prompts are stripped from outputs."""
        gen = self.generation
        max_new = gen.max_new_tokens or self._decoder_max_len()
        kwargs = dict(
            max_new_tokens=max_new,
            num_beams=gen.num_beams,
            no_repeat_ngram_size=gen.no_repeat_ngram_size or None,
            length_penalty=gen.length_penalty,
            early_stopping=gen.early_stopping if gen.num_beams > 1 else False,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if self.task == "causal":
            input_ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        else:
            input_ids, mask = batch["input_ids"], batch["attention_mask"]
        output = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        if self.task == "causal":  # prompts are left-padded to one width, so the summary starts after it
            output = output[:, input_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [" ".join(t.split()) for t in texts]

    def _decoder_max_len(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        return int(getattr(datamodule, "decoder_max_len", 200))

    # ---- optimization ---------------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserInputError("no trainable parameters: check --model.lora.target_modules and --model.backend")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_lambda(self, total_steps: float):
        total = max(int(total_steps) if math.isfinite(total_steps) else 10_000, 1)
        warmup = int(self.warmup_ratio * total)
        decay = self.lr_decay

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if decay == "constant":
                return 1.0
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            if decay == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return max(1.0 - progress, 0.0)

        return factor

    # ---- checkpointing: adapters and training state only ----------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights training changes (LoRA, or all of them for full fine-tuning), keyed as in ``state_dict``."""
        return {f"model.{n}": p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    @override
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # a re-serialized 4-bit base is slow and known to corrupt weights: checkpoints carry trainable weights only
        if self.model is None or self.loaded.decision.backend == "full":
            return super().state_dict(*args, **kwargs)
        return self.trainable_state_dict()

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model is None:
            return
        checkpoint["lit_qsum"] = {
            "backend": self.loaded.decision.backend,
            "task": self.loaded.task,
            "model_type": self.loaded.model_type,
            # scaled by OOM recovery: a resumed run keeps the sizes that fit
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "micro_batch_limit": self.micro_batch_limit,
            "nonfinite_total": self.nonfinite_total,
        }
        peft_config = getattr(self.model, "peft_config", None)
        if peft_config:
            from peft import get_peft_model_state_dict  # noqa: PLC0415

            checkpoint["peft_adapter"] = {
                "config": peft_config["default"],
                "state_dict": {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.model).items()},
            }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model is None:
            return
        missing = set(self.trainable_state_dict()) - set(checkpoint.get("state_dict", {}))
        if missing:
            raise UserInputError(
                f"--ckpt_path: the checkpoint lacks {len(missing)} trainable weights of this model "
                f"(e.g. {sorted(missing)[0]}); was it trained with another --model.lora or --model.backend?"
            )
        state = checkpoint.get("lit_qsum", {})
        self.accumulate_grad_batches = state.get("accumulate_grad_batches", self.accumulate_grad_batches)
        self.micro_batch_limit = state.get("micro_batch_limit", self.micro_batch_limit)
        self.nonfinite_total = state.get("nonfinite_total", 0)
        saved = state.get("backend")
        if saved and saved != self.loaded.decision.backend:
            rank_zero_warn(f"checkpoint was trained with backend {saved}, now running {self.loaded.decision.backend}")
