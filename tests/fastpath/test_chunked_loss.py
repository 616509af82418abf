"""Chunked causal-LM cross-entropy: the loss and the gradients of transformers' own loss, without full logits."""

from __future__ import annotations

import pytest
import torch

from lit_qsum.fastpath.chunked_loss import causal_lm_loss, linear_cross_entropy, plain_head_causal_lm

TINY = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    lm = (LlamaForCausalLM(LlamaConfig(**TINY)) if kind == "llama"
          else Qwen2ForCausalLM(Qwen2Config(**TINY, tie_word_embeddings=True)))
    return _with_lora(lm, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])


def _with_lora(lm, targets: list[str], **config):
    """peft LoRA r4 on ``targets``, its B matrices random (zeros would leave the adapter's gradients trivial)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_chunked_loss_gives_the_models_loss_and_lora_gradients(kind: str, chunk_rows: int | None) -> None:
    model = _model(kind)
    batch = _batch()
    lm = plain_head_causal_lm(model)
    assert lm is not None
    want_loss, want = _loss_and_grads(model, lambda: model(**batch).loss)
    got_loss, got = _loss_and_grads(model, lambda: causal_lm_loss(lm, batch, chunk_rows=chunk_rows))
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_target_rows_alone_give_the_models_loss_and_lora_gradients(kind: str) -> None:
    """With the collator's target positions only the rows that predict a summary token reach the head: the loss and
    the adapters' gradients of every position's logits."""
    from lit_qsum.data.collate import CausalCollator

    model = _model(kind)
    gen = torch.Generator().manual_seed(4)
    features = [{"prompt_ids": torch.randint(3, 97, (p,), generator=gen).tolist(),
                 "target_ids": torch.randint(3, 97, (t,), generator=gen).tolist(), "index": i}
                for i, (p, t) in enumerate([(9, 3), (4, 7), (13, 1), (1, 5)])]
    batch = CausalCollator(pad_token_id=0, pad_to_multiple_of=4)(features)
    assert batch["target_positions"].shape == (4, 8) and int((batch["target_labels"] != -100).sum()) == 16
    lm = plain_head_causal_lm(model)
    model_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    want_loss, want = _loss_and_grads(model, lambda: model(**model_batch).loss)
    got_loss, got = _loss_and_grads(model, lambda: causal_lm_loss(lm, batch, chunk_rows=5))
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_loss_under_bf16_autocast_matches_the_model() -> None:
    """Logits in bf16, upcast to float32, as transformers computes them under autocast."""
    model = _model("llama")
    batch = _batch()
    lm = plain_head_causal_lm(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_loss, want = _loss_and_grads(model, lambda: model(**batch).loss)
        got_loss, got = _loss_and_grads(model, lambda: causal_lm_loss(lm, batch, chunk_rows=5))
    torch.testing.assert_close(got_loss, want_loss, rtol=2e-3, atol=1e-4)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=2e-2, atol=2e-4, msg=name)


def test_no_label_tokens_gives_nan_as_the_mean_cross_entropy_does() -> None:
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(10, 8), torch.full((4,), -100), chunk_rows=3)
    reference = torch.nn.functional.cross_entropy(hidden.detach() @ torch.randn(10, 8).t(), torch.full((4,), -100))
    assert torch.isnan(loss) and torch.isnan(reference)


def test_models_with_a_different_head_are_left_to_their_own_loss() -> None:
    from transformers import BartConfig, BartForConditionalGeneration, Gemma2Config, Gemma2ForCausalLM

    assert plain_head_causal_lm(BartForConditionalGeneration(BartConfig(
        vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32))) is None
    assert plain_head_causal_lm(Gemma2ForCausalLM(Gemma2Config(**{**TINY, "head_dim": 8}))) is None  # soft-capping
    model = _model("llama")
    model.get_base_model().lm_head.weight.requires_grad_(True)  # a trained head needs its own gradient
    assert plain_head_causal_lm(model) is None


@pytest.mark.parametrize("task", ["causal", "seq2seq-t5", "seq2seq-bart"])
def test_a_fit_with_the_chunked_loss_lands_on_the_full_loss_fit(tmp_path, task: str) -> None:
    """speed.chunked_loss through the module (dropout and accumulation as users train): the same adapter."""
    import lightning.pytorch as L

    from lit_qsum.data.datamodule import SummarizationDataModule
    from lit_qsum.module import SummarizationModule
    from lit_qsum.settings import LoraSettings, SpeedSettings

    llama = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}

    t5 = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2,
          "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1}
    bart = {"model_type": "bart", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
            "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "dropout": 0.1,
            "max_position_embeddings": 512}
    config = {"causal": llama, "seq2seq-t5": t5, "seq2seq-bart": bart}[task]

    def fit(chunked: bool) -> SummarizationModule:
        L.seed_everything(5)
        module = SummarizationModule(model_config=config, tokenizer="lit_qsum:demo", backend="lora", init_seed=5,
                                     lora=LoraSettings(rank=4, alpha=8, dropout=0.05), accumulate_grad_batches=2,
                                     speed=SpeedSettings(chunked_loss=chunked, chunked_seq2seq_loss=chunked))
        data = SummarizationDataModule(task=task.split("-", maxsplit=1)[0], batch_size=4, max_train_samples=24,
                                       max_eval_samples=4)
        trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path / str(chunked),
                            use_distributed_sampler=False)
        trainer.fit(module, data)
        return module

    full, chunked = fit(False), fit(True)
    assert full._chunked_lm is None and chunked._chunked_lm is not None
    reference = dict(full.model.named_parameters())
    compared = 0
    for name, param in chunked.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, reference[name], rtol=1e-4, atol=1e-6, msg=name)
            compared += 1
    assert compared


# ---- seq2seq: T5 (the head's input scaled by the model) and BART (final_logits_bias) ------------------------------
def _seq2seq(kind: str):
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    if kind.startswith("t5"):
        lm = T5ForConditionalGeneration(T5Config(
            vocab_size=97, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
            dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
            tie_word_embeddings=kind == "t5-scaled"))  # transformers 5: False = no scaling of the decoder output
        targets = ["q", "k", "v", "o", "wi", "wo"]
    else:
        lm = BartForConditionalGeneration(BartConfig(
            vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, forced_eos_token_id=2))
        with torch.no_grad():  # a bias that matters: zeros would hide a bias left out
            lm.final_logits_bias.normal_(0, 0.5)
        targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    return _with_lora(lm, targets, task_type="SEQ_2_SEQ_LM")


def _seq2seq_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 97, (3, 13), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = torch.randint(3, 97, (3, 6), generator=gen)
    labels[0, 4:] = -100  # padded summaries
    labels[2, 5:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", ["t5-scaled", "t5-unscaled", "bart"])
@pytest.mark.parametrize("chunk_rows", [None, 5])
def test_seq2seq_chunked_loss_gives_the_models_loss_and_lora_gradients(kind: str, chunk_rows: int | None) -> None:
    from lit_qsum.fastpath.chunked_loss import plain_head_seq2seq_lm, seq2seq_lm_loss

    model = _seq2seq(kind)
    batch = _seq2seq_batch()
    lm = plain_head_seq2seq_lm(model)
    assert lm is not None
    head = lm.lm_head
    want_loss, want = _loss_and_grads(model, lambda: model(**batch).loss)
    got_loss, got = _loss_and_grads(model, lambda: seq2seq_lm_loss(lm, batch, chunk_rows=chunk_rows))
    assert lm.lm_head is head  # the T5 stand-in is put back
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    assert want.keys() == got.keys() and want
    for name in want:  # float32 sums in another order: differences of ~1e-7 on gradients of ~1
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_seq2seq_heads_the_chunked_loss_cannot_take_are_refused() -> None:
    from lit_qsum.fastpath.chunked_loss import plain_head_seq2seq_lm

    model = _seq2seq("bart")
    assert plain_head_seq2seq_lm(model) is not None
    model.get_base_model().lm_head.weight.requires_grad_(True)  # a trained head needs its own gradient
    assert plain_head_seq2seq_lm(model) is None
    assert plain_head_seq2seq_lm(torch.nn.Linear(2, 2)) is None
