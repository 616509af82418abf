"""The LightningModule: trains a summarizer (LoRA / QLoRA / full), generates, scores ROUGE, checkpoints adapters.

Read top to bottom: ``__init__`` keeps settings, ``setup`` builds the model through
``lit_qsum.backends.loader`` (which alone knows peft, bitsandbytes and unsloth), then the steps,
generation, optimizers and checkpointing.

The training step's machinery (micro-batches, OOM recovery, NaN/Inf skips, DDP/FSDP agreement) is a
``StepEngine`` (``lit_qsum.steps``) the module owns; the module supplies the loss and orchestrates. What a
checkpoint holds besides the weights is in ``lit_qsum.checkpoint_contents``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_qsum import checkpoint_contents
from lit_qsum.backends.choice import BackendRequest
from lit_qsum.backends.hf import T5_FAMILY, config_for, task_of
from lit_qsum.backends.loader import LoadedModel, ModelSpec, load_model, tokenizer_spec
from lit_qsum.cpu_threads import set_cpu_threads
from lit_qsum.distributed import fsdp, grad_sync
from lit_qsum.errors import UserInputError
from lit_qsum.fastpath import apply_speedups, cuda_graphs, restore_speedups
from lit_qsum.fastpath.chunked_loss import causal_lm_loss, plain_head_causal_lm, plain_head_seq2seq_lm, seq2seq_lm_loss
from lit_qsum.fastpath.optimizer import prefer_fused_adam
from lit_qsum.generation import generate_summaries
from lit_qsum.lr_schedule import LRDecay, WarmupDecayLR
from lit_qsum.metrics.rouge import MultiRef, RougeTokenizer, SummaryRouge
from lit_qsum.metrics.tokenizers import check_tokenizer
from lit_qsum.settings import GenerationSettings, LoraSettings, QuantizationSettings, SpeedSettings
from lit_qsum.steps import StepEngine, token_shares


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
        lora: LoraSettings = LoraSettings(),  # noqa: B008 - instances (never mutated) list their fields in --help
        quantization: QuantizationSettings = QuantizationSettings(),  # noqa: B008
        gradient_checkpointing: bool = False,
        speed: SpeedSettings | None = None,
        generation: GenerationSettings = GenerationSettings(),  # noqa: B008
        rouge_tokenizer: RougeTokenizer = "default",
        rouge_multi_ref: MultiRef = "best",
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        warmup_ratio: float = 0.05,
        lr_decay: LRDecay = "linear",
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
            speed: The fast path (fused LoRA layers, attention backend); each piece can be switched off.
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
            max_consecutive_nonfinite: Stop after this many optimizer steps in a row skipped for a NaN/Inf loss.
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
        if num_logged_examples < 0:
            raise UserInputError(f"--model.num_logged_examples must be >= 0, got {num_logged_examples}")
        if max_consecutive_nonfinite < 1:
            raise UserInputError(f"--model.max_consecutive_nonfinite must be >= 1, got {max_consecutive_nonfinite}")
        self.spec = ModelSpec(
            model_name_or_path=model_name_or_path,
            model_config=model_config,
            tokenizer=tokenizer,
            backend=backend,
            lora=lora or LoraSettings(),  # None: hyper_parameters of checkpoints saved when None was the default
            quantization=quantization or QuantizationSettings(),
            gradient_checkpointing=gradient_checkpointing,
            init_seed=init_seed,
            max_seq_length=max_seq_length,
        )
        if (model_name_or_path is None) == (model_config is None):
            raise UserInputError("set exactly one of --model.model_name_or_path and --model.model_config")
        self.generation = generation or GenerationSettings()
        self.speed = speed or SpeedSettings()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.warmup_ratio = warmup_ratio
        self.lr_decay = lr_decay
        self.num_logged_examples = num_logged_examples
        # manual optimization: a training step may split its batch after an OOM (see StepEngine)
        self.automatic_optimization = False
        self.engine = StepEngine(self, accumulate_grad_batches, gradient_clip_val, max_consecutive_nonfinite)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.val_rouge = SummaryRouge(tokenizer=rouge_tokenizer, multi_ref=rouge_multi_ref)
        self.test_rouge = SummaryRouge(tokenizer=rouge_tokenizer, multi_ref=rouge_multi_ref)
        self.model: torch.nn.Module | None = None
        self.loaded: LoadedModel | None = None
        self._chunked_lm: torch.nn.Module | None = None  # set in setup where speed.chunked_loss applies
        self.run_facts: dict[str, Any] = {}
        # (dialogue, reference, prediction) of this validation's first examples, for TensorBoardSummaries
        self.val_examples: list[tuple[str, str, str]] = []
        self.checkpoint_step: int | None = None  # the optimizer step of the checkpoint loaded, if any
        self._threads_before: int | None = None
        # the checkpoint holds only trainable weights; the frozen base is rebuilt from its source
        self.strict_loading = False

    # ---- model building -------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        if stage != "predict":  # scoring needs the ROUGE tokenizer's optional package; say so before loading weights
            check_tokenizer(self.val_rouge.tokenizer)
        trainer = self.trainer
        device = trainer.strategy.root_device
        if device.type == "cpu":
            self._threads_before = torch.get_num_threads()  # restored in teardown, for callers that go on
            line = set_cpu_threads()
            if line:
                rank_zero_info(line)
        load_device = fsdp.load_device(trainer.strategy, device)
        self.loaded = load_model(self.spec, device=device, load_device=load_device, num_devices=trainer.world_size,
                                 tokenizer=self._data_tokenizer(trainer))
        self.model = self.loaded.model
        if load_device != device:
            rank_zero_info(fsdp.host_load_line(self.model))
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps submodule modes as found
        if self.loaded.decision.backend in ("qlora", "lora"):
            # under FSDP too: T5's wo stored in bf16 joins its block's unit instead of being a float32 unit of its own
            speed, lines = fsdp.speed_under(trainer.strategy, self.speed)
            lines += apply_speedups(
                self.model, speed, device=device, gradient_checkpointing=self.spec.gradient_checkpointing,
                precision=str(trainer.precision),
            )
            for line in lines:
                rank_zero_info(line)
            fsdp.own_block_inputs(self.model)  # FSDP reshards each frozen block after its own backward; all strategies alike
        self._chunked_lm = self._setup_chunked_loss()
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

    def _data_tokenizer(self, trainer: L.Trainer) -> Any:
        """The data module's tokenizer, loaded once for both (None when there is no SummarizationDataModule).

        Raises:
            UserInputError: the data module tokenizes with another tokenizer than the model's (token ids would not
                match the embeddings).
        """
        datamodule = getattr(trainer, "datamodule", None)
        data_spec = getattr(datamodule, "tokenizer_spec", None)
        if data_spec is None:
            return None
        model_spec = tokenizer_spec(self.spec)
        if data_spec != model_spec:
            raise UserInputError(
                f"--data.tokenizer {data_spec!r} is not the model's tokenizer {model_spec!r}: the token ids would not "
                "match the model's embeddings. Leave --data.tokenizer unset (the CLI links it to the model's)"
            )
        return datamodule.tokenizer

    def resolve_task(self) -> str:
        """seq2seq or causal, read from the config alone (cheap: no weights), so the data module can tokenize."""
        return task_of(config_for(self.spec.model_config, self.spec.model_name_or_path))

    @property
    def tokenizer(self):
        """The tokenizer the model was built with (available after ``setup``)."""
        return self.loaded.tokenizer

    @property
    def task(self) -> str:
        """seq2seq or causal (available after ``setup``)."""
        return self.loaded.task

    @property
    def sharded(self) -> bool:
        """True under FSDP (``QLoraFSDPStrategy``): forward and backward all-gather the frozen base across ranks."""
        return self.engine.sharded

    @property
    def step_graphs(self) -> cuda_graphs.StepGraphs | None:
        """The CUDA graphs running training steps, where they can (set at train start)."""
        return self.engine.graphs

    # ---- steps ----------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if self._chunked_lm is not None and self.training:
            if self.loaded.task == "causal":
                return causal_lm_loss(self._chunked_lm, batch)
            return seq2seq_lm_loss(self._chunked_lm, batch)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss

    def _setup_chunked_loss(self) -> torch.nn.Module | None:
        """The LM whose training loss ``speed.chunked_loss`` (causal) or ``speed.chunked_seq2seq_loss`` computes in
        chunks (None: the model's own loss)."""
        causal = self.loaded.task == "causal"
        flag = "chunked_loss" if causal else "chunked_seq2seq_loss"
        if not getattr(self.speed, flag):
            return None
        if self.loaded.decision.backend not in ("qlora", "lora"):
            backend = self.loaded.decision.backend
            rank_zero_info(f"fast path: speed.{flag} skipped: the {backend} backend has its own loss")
            return None
        if isinstance(self.trainer.strategy, fsdp.QLoraFSDPStrategy):
            # the chunked loss calls the LM inside the FSDP root, whose own forward is what gathers the head
            rank_zero_info(f"fast path: speed.{flag} skipped under FSDP: the model computes its own loss")
            return None
        lm = plain_head_causal_lm(self.model) if causal else plain_head_seq2seq_lm(self.model)
        if lm is None:
            rank_zero_info(f"fast path: speed.{flag} skipped: {self.loaded.model_type} has a head it can't chunk "
                           "(soft-capping, a trained or biased LM head, or an architecture it doesn't know)")
        else:
            kind = "causal-LM" if causal else "seq2seq"
            rank_zero_info(f"fast path: {kind} loss over chunks of rows (no full [batch, length, vocab] logits)")
        return lm

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        losses = self.engine.train_step(batch)
        if not losses:
            return None
        loss = torch.stack(losses).mean()
        # to the loggers only, as a tensor read when Lightning writes the logs (every log_every_n_steps): a progress-bar
        # metric is read every step, which makes the host wait for the GPU. SummarizationProgressBar shows
        # engine.last_loss instead, the last optimizer step's loss that the host already has.
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=len(batch["index"]))
        return loss

    @override
    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        # the data module tracks how far into the epoch we are, for mid-epoch resumes
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "mark_consumed"):
            datamodule.mark_consumed(len(batch["index"]))

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.engine.clip_gradients(optimizer)

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val", self.val_rouge)

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test", self.test_rouge)

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, prefix: str, rouge: SummaryRouge) -> None:
        if batch.get("is_padding"):
            self._padding_step(batch)
            return
        size = len(batch["index"])
        pieces = self.engine.eval_with_oom_retry(batch, lambda chunk: (self._loss(chunk), self.generate(chunk)))
        if len(pieces) == 1:
            loss = pieces[0][1][0]
        else:  # weighted by label tokens, the chunks' mean losses give the whole batch's
            shares = token_shares(batch, [chunk for chunk, _ in pieces], self.task)
            loss = sum(share * chunk_loss for share, (_, (chunk_loss, _)) in zip(shares, pieces))
        self.log(f"{prefix}/loss", loss, sync_dist=True, batch_size=size, prog_bar=prefix == "val")
        predictions = [text for _, (_, texts) in pieces for text in texts]
        rouge.update(predictions, batch["references"])
        room = self.num_logged_examples - len(self.val_examples)
        if prefix == "val" and room > 0:  # the first examples of the validation, not the whole first batch
            examples = zip(batch["dialogue"], batch["references"], predictions)
            self.val_examples += [(dialogue, refs[0], pred) for dialogue, refs, pred in list(examples)[:room]]
        if prefix == "val" and batch_idx == 0 and predictions:
            rank_zero_info(f"example summary: {predictions[0]!r} | reference: {batch['references'][0][0]!r}")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_rouge("val", self.val_rouge)
        self.val_examples = []  # written by TensorBoardSummaries, whose hook runs before this one

    @override
    def on_test_epoch_end(self) -> None:
        self._log_rouge("test", self.test_rouge)

    def _log_rouge(self, prefix: str, rouge: SummaryRouge) -> None:
        scores = rouge.compute()  # synced over ranks: every example once, padding batches never counted
        for name, value in scores.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "rougeL", sync_dist=False)
        self.log(f"{prefix}/num_examples", rouge.num_examples.clone().float(), reduce_fx="sum", sync_dist=True)
        rouge.reset()

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, list]:
        if batch.get("is_padding"):
            self._padding_step(batch)
            return {"index": [], "fname": [], "summary": []}
        summaries = [text for _, texts in self.engine.eval_with_oom_retry(batch, self.generate) for text in texts]
        return {"index": batch["index"].tolist(), "fname": list(batch["fname"]), "summary": summaries}

    def _padding_step(self, batch: dict[str, Any]) -> None:
        """A rank with one evaluation batch fewer than its peers gets a repeated sample instead (see
        ``SortedEvalBatchSampler``): it scores nothing, but under FSDP it must run the forward and generate passes
        whose all-gathers the other ranks are waiting in."""
        if self.sharded:
            self._loss(batch)
            self.generate(batch)

    # ---- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> list[str]:
        """Summaries for a batch: beam search per ``generation``; causal prompts are stripped from outputs.

        Special tokens are dropped, ``#Person1#``-style tags kept, whitespace normalized: see ``decode_summaries``.
        """
        return generate_summaries(self.model, self.tokenizer, self.task, self.generation, batch,
                                  default_max_new_tokens=self._decoder_max_len())

    def _decoder_max_len(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        return int(getattr(datamodule, "decoder_max_len", 200))

    # ---- optimization ---------------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        self.engine.reset_trainable()  # a strategy may have wrapped the model since (FSDP's parameter views)
        params = self.engine.trainable()
        if not params:
            raise UserInputError("no trainable parameters: check --model.lora.target_modules and --model.backend")
        try:
            optimizer = self.optimizer_factory(params)
        except ValueError as err:  # torch's optimizers check lr, betas, eps and weight_decay only when built
            raise UserInputError(f"--model.optimizer: {err}") from err
        if self.speed.fused_optimizer:
            prefer_fused_adam(optimizer)
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            scheduler = WarmupDecayLR(optimizer, self._estimated_optimizer_steps(), self.warmup_ratio, self.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _estimated_optimizer_steps(self) -> float:
        """Optimizer steps of the whole fit, counting this module's own accumulation.

        Lightning's ``estimated_stepping_batches`` divides by the Trainer's accumulation, which is 1
        here. A loader batch cut into ``k`` chunks counts ``k`` micro-batches, so a run resumed with
        OOM-scaled sizes (smaller batches, more accumulation) gets the same total as before the OOM.
        """
        trainer = self.trainer
        estimate = trainer.estimated_stepping_batches
        if trainer.max_epochs in (None, -1) or not math.isfinite(trainer.num_training_batches):
            return estimate  # bounded by max_steps alone
        loader = trainer.train_dataloader
        batch_size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
        micro_batch = self.engine.micro_batch
        size = micro_batch.micro_batch_size
        chunks = math.ceil(batch_size / size) if batch_size and size else 1
        per_epoch = math.ceil(trainer.num_training_batches * chunks / micro_batch.accumulate_grad_batches)
        steps = per_epoch * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

    @override
    def on_train_start(self) -> None:
        loss, line = fsdp.offloading_loss(self.trainer.strategy, self._loss,
                                          checkpointing=self.spec.gradient_checkpointing, device=self.device)
        if line:
            rank_zero_info(line)
        self.engine.setup_train(
            loss=loss,
            task=self.task,
            # DDP, and FSDP for the adapter it leaves whole: gradients are averaged once per optimizer step, not in
            # backward (see lit_qsum.distributed.grad_sync)
            syncs_per_step=grad_sync.syncs_per_step(self.trainer.strategy.model) or self.sharded,
            graphs=self._setup_step_speed(),
        )
        self._setup_lr_schedule()
        rank_zero_info(self._run_summary())

    def _setup_step_speed(self) -> cuda_graphs.StepGraphs | None:
        """The fast path's per-step pieces, now that the strategy, precision and any restored optimizer state are
        final; returns the CUDA graphs that run the steps, where they can."""
        if self.speed.fused_optimizer:
            for optimizer in self.trainer.optimizers:  # again after a resume: load_state_dict restored the saved flags
                prefer_fused_adam(optimizer)
        if not self.speed.cuda_graphs or self.loaded.decision.backend not in ("qlora", "lora"):
            return None
        why_not = cuda_graphs.unsupported_reason(
            device=self.device, precision=str(self.trainer.precision), sharded=self.sharded,
            checkpointing=self.spec.gradient_checkpointing, compiled=self.speed.compile,
        )
        if why_not is not None:
            if self.device.type == "cuda":
                rank_zero_info(f"fast path: CUDA graphs off: {why_not}")
            return None
        return cuda_graphs.StepGraphs(
            self._loss, self.engine.trainable(), warm_each_shape=self.speed.compile,
            cudnn_attention=self.speed.cudnn_attention_in_graphs, log=rank_zero_info,
        )

    def _setup_lr_schedule(self) -> None:
        """configure_optimizers sized the schedule before callbacks settled the batch size (a batch-size finder, an
        OOM-scaled resume); measure again now that the loader is final, so the schedule spans the real run."""
        if self.scheduler_factory is None:  # the built-in WarmupDecayLR; a configured scheduler is left as built
            self.lr_schedulers().set_total_steps(self._estimated_optimizer_steps())

    @override
    def on_train_end(self) -> None:
        self.engine.resolve_pending(log=False)  # the last step's NaN/Inf count
        if self.engine.graphs is not None:
            rank_zero_info(self.engine.graphs.summary())
            self.engine.graphs = None  # their memory pool goes back for whatever runs next in this process

    def _run_summary(self) -> str:
        """One line at the start of training: the effective batch, the length of the run, where outputs go."""
        trainer = self.trainer
        parts = []
        batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if batch:
            accumulate = self.engine.micro_batch.accumulate_grad_batches
            per_step = batch * accumulate * trainer.world_size
            parts.append(f"batch {batch} x {accumulate} accumulated x {trainer.world_size} "
                         f"device(s) = {per_step} samples per optimizer step")
        steps = self._estimated_optimizer_steps()
        if math.isfinite(steps):
            parts.append(f"{int(steps):,} optimizer steps")
        folders = sorted({cb.dirpath for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)})
        if folders:
            parts.append("checkpoints -> " + ", ".join(folders))
        if trainer.logger is not None and trainer.logger.log_dir:
            parts.append(f"logs -> {trainer.logger.log_dir}")
        return "run: " + "; ".join(parts)

    @override
    def teardown(self, stage: str) -> None:
        restore_speedups()
        self.engine.graphs = None  # also when fit ended in an exception: the graphs' memory pool goes back
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    # ---- checkpointing: adapters and training state only ----------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights training changes (LoRA, or all of them for full fine-tuning), keyed as in ``state_dict``."""
        return {f"model.{n}": t for n, t in fsdp.trainable_state(self.model).items()}

    @override
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # a re-serialized 4-bit base is slow and known to corrupt weights: checkpoints carry trainable weights only
        if self.model is None or self.loaded.decision.backend == "full":
            return super().state_dict(*args, **kwargs)
        return self.trainable_state_dict()

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.engine.resolve_pending(log=False)  # the counts it saves include the last step's
        if self.model is not None:
            checkpoint_contents.save_training_state(self, checkpoint)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # validate/test/predict restore no loop state, so trainer.global_step stays 0 there: keep the checkpoint's
        self.checkpoint_step = checkpoint.get("global_step")
        if self.model is not None:
            checkpoint_contents.load_training_state(self, checkpoint)
