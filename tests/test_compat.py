"""``lit_qsum.compat``: each private API of another library that lit-qsum uses still does what lit-qsum relies on.

One test per wrapped access; when a release of Lightning, peft, transformers or torch moves one, the failing test
names the function in ``lit_qsum/compat.py`` to fix.
"""

from __future__ import annotations

import argparse
import inspect

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_qsum import compat
from lit_qsum.backends.probe import probe_environment


def test_lightning_cli_still_has_the_ckpt_path_hook_lit_qsum_overrides() -> None:
    from lit_qsum.cli import LitQsumCLI

    hook = compat.parse_ckpt_path_hook(LightningCLI)
    assert list(inspect.signature(hook).parameters) == ["self"]
    assert compat.PARSE_CKPT_PATH_HOOK in LitQsumCLI.__dict__  # ours replaces it and calls it through super()


def test_option_strings_lists_every_flag() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model.lora.rank", type=int)
    parser.add_argument("-q", "--quiet", action="store_true")
    assert compat.option_strings(parser) == ["-h", "--help", "--model.lora.rank", "-q", "--quiet"]


class _ShortenEpoch(L.Callback):
    def __init__(self, helper) -> None:
        self.helper = helper
        self.batches = 0

    def on_train_batch_end(self, trainer, *args) -> None:
        self.batches += 1
        if self.batches == 2:
            self.helper(trainer)


def _fit_boring(tmp_path, callback: L.Callback, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[callback], **trainer_kwargs)
    trainer.fit(BoringModel())
    return trainer


def test_set_running_epoch_length_ends_the_running_epoch_at_the_new_length(tmp_path) -> None:
    callback = _ShortenEpoch(lambda trainer: compat.set_running_epoch_length(trainer.fit_loop, 5))
    trainer = _fit_boring(tmp_path, callback)
    assert callback.batches == 5  # BoringModel's loader has 64 batches
    assert trainer.global_step == 5


def test_reset_train_and_val_loaders_rebuilds_the_train_loader(tmp_path) -> None:
    seen = []

    def reset(trainer) -> None:
        before = trainer.train_dataloader
        compat.reset_train_and_val_loaders(trainer)
        seen.append(trainer.train_dataloader is not before and trainer.train_dataloader is not None)

    _fit_boring(tmp_path, _ShortenEpoch(reset), max_steps=3)
    assert seen == [True]


def test_write_tensorboard_hparams_writes_an_hparams_session(tmp_path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    logger.experiment.add_scalar("val/rouge1", 0.5, 3)
    compat.write_tensorboard_hparams(logger, {"model": {"lora": {"rank": 16}}, "lr": 2e-4}, {"val/rouge1": 0.5}, 3)
    logger.experiment.flush()
    events = event_accumulator.EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.PluginTagToContent("hparams"), "no HPARAMS session written"
    assert events.Scalars("val/rouge1")[0].value == 0.5  # the metric is written once, by the scalar above


def test_lora_layer_runs_one_adapter_follows_peft_switches() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
    layer = model.base_model.model[0]
    assert compat.lora_layer_runs_one_adapter(layer, "default")
    assert not compat.lora_layer_runs_one_adapter(layer, "other")
    model.base_model.disable_adapter_layers()
    assert not compat.lora_layer_runs_one_adapter(layer, "default")
    model.base_model.enable_adapter_layers()
    layer.merge()
    assert not compat.lora_layer_runs_one_adapter(layer, "default")


def test_sdpa_mask_skip_helpers_exist_and_answer_with_a_bool() -> None:
    module, names = compat.sdpa_mask_skip_helpers()
    assert sorted(names) == sorted(compat.SDPA_MASK_SKIP_HELPERS), "transformers renamed its SDPA mask-skip helpers"
    helper = module._ignore_bidirectional_mask_sdpa
    assert helper(torch.ones(2, 3, dtype=torch.bool), 3) in (True, False)


def test_no_split_module_classes_names_the_transformer_blocks() -> None:
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=1, vocab_size=50))
    bart = BartForConditionalGeneration(BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, vocab_size=50,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32))
    assert compat.no_split_module_classes(t5.modules()) == {"T5Block"}
    assert compat.no_split_module_classes(bart.modules()) == {"BartEncoderLayer", "BartDecoderLayer"}
    assert compat.keep_in_fp32_module_names(t5.modules()) == {"wo"}  # T5's FFN output projection
    assert compat.keep_in_fp32_module_names(bart.modules()) == set()


def test_compile_module_call_routes_calls_through_the_wrapper_once() -> None:
    module = torch.nn.Linear(3, 2)
    calls = []

    def wrap(own_call):
        def call(*args, **kwargs):
            calls.append(1)
            return own_call(*args, **kwargs)

        return call

    x = torch.ones(1, 3)
    assert compat.compile_module_call(module, wrap)
    assert not compat.compile_module_call(module, wrap)  # already routed
    torch.testing.assert_close(module(x), torch.nn.functional.linear(x, module.weight, module.bias))
    assert calls == [1]


def test_foreach_copy_copies_each_pair() -> None:
    dst = [torch.zeros(2), torch.zeros(3, dtype=torch.float64)]
    compat.foreach_copy(dst, [torch.ones(2), torch.full((3,), 2.0, dtype=torch.float64)])
    assert dst[0].tolist() == [1.0, 1.0] and dst[1].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.skipif(not probe_environment("cpu").bitsandbytes_works, reason="bitsandbytes 4-bit unavailable")
def test_quantize_4bit_on_quantizes_on_the_training_device_and_keeps_the_result_on_the_host(monkeypatch) -> None:
    """``load_on_cpu`` with a GPU: each weight bound for the host is quantized on the GPU (bitsandbytes' CPU kernels
    round differently), then handed back to the host with its quant state; other moves are left alone. Here the
    "GPU" quantization is recorded and done on the CPU; ``tests/distributed/test_load_on_cpu_cuda.py`` checks the real
    one against loading on the GPU."""
    import bitsandbytes as bnb  # noqa: PLC0415

    real, asked = bnb.nn.Params4bit._quantize, []

    def recording(self, device):
        asked.append(torch.device(device))
        return real(self, torch.device("cpu"))

    monkeypatch.setattr(bnb.nn.Params4bit, "_quantize", recording)
    gpu = torch.device("cuda", 1)
    weight = torch.randn(64, 64, dtype=torch.bfloat16)
    with compat.quantize_4bit_on(gpu):
        held = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4").to("cpu")
        bnb.nn.Params4bit(weight.clone(), requires_grad=False).to(torch.device("meta"))  # not a quantizing move
    assert asked == [gpu]
    assert held.bnb_quantized and held.device.type == held.quant_state.absmax.device.type == "cpu"
    assert bnb.nn.Params4bit._quantize is recording  # restored on leaving
    direct = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4").to("cpu")
    assert torch.equal(held.data, direct.data)
