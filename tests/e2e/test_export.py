"""``lit-qsum export``: merged and adapter folders reload with plain transformers / peft and summarize like lit-qsum.

Each run trains the demo T5 for a few steps at the demo's high LR (3e-3) so the LoRA B matrices move
far from their zero init and the adapter visibly changes outputs; the test checks it does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import instantiate_module

from lit_qsum.cli import main
from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.generation import decode_summaries
from lit_qsum.module import SummarizationModule

pytestmark = pytest.mark.slow  # CLI fits and exports: ~20 s in all on 2 CPU cores

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
MAX_NEW = 12


def fit(work: Path, steps: int, *extra: str) -> Path:
    """Train the demo from ``work`` for ``steps`` steps, validating once at the end; return its best.ckpt."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(sys, "argv", ["lit-qsum"])
        main([
            "fit", "--config", DEMO, "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
            "--data.batch_size", "8", "--data.max_eval_samples", "4", "--data.eval_batch_size", "4",
            "--model.generation.max_new_tokens", str(MAX_NEW), "--run_name", "export", *extra,
        ])
    return work / "outputs" / "demo" / "export" / "checkpoints" / "best.ckpt"


def export(ckpt: Path, out: Path, *extra: str) -> Path:
    main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(out), *extra])
    return out


def module_from(ckpt: Path) -> SummarizationModule:
    """The model as ``lit-qsum predict`` runs it: built from the checkpoint's hyper_parameters, weights loaded."""
    checkpoint = torch.load(ckpt, weights_only=False)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "_instantiator"}
    module = instantiate_module(SummarizationModule, hparams)
    module.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    module.setup("predict")
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    module.on_load_checkpoint(checkpoint)  # raises if a trainable weight were missing
    return module.eval()


def dev_batch(size: int = 4) -> dict:
    dm = SummarizationDataModule(task="seq2seq", encoder_max_len=256, decoder_max_len=64, eval_batch_size=size,
                                 max_eval_samples=size)
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


def greedy(model: torch.nn.Module, batch: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)


def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.logits


GREEDY = {"max_new_tokens": MAX_NEW, "do_sample": False, "num_beams": 1}


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit(tmp_path_factory.mktemp("lora"), 20)


def test_merged_export_loads_alone_and_summarizes_like_lit_qsum(lora_ckpt: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = export(lora_ckpt, tmp_path / "merged")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert not any(name.startswith("adapter") for name in files)  # no peft left
    merged = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)

    module = module_from(lora_ckpt)
    batch = dev_batch()
    assert tokenizer(batch["dialogue"][0]).input_ids == module.tokenizer(batch["dialogue"][0]).input_ids
    expected_ids = greedy(module.model, batch, **GREEDY)
    # the export carries the checkpoint's generation settings: a bare generate() decodes as lit-qsum does
    ids = greedy(merged, batch)
    assert torch.equal(ids, expected_ids)
    assert decode_summaries(tokenizer, ids) == module.generate(batch)
    torch.testing.assert_close(logits(merged, batch), logits(module.model, batch), atol=1e-4, rtol=1e-4)

    # the adapter matters: without it the same base gives other logits and other summaries
    info = json.loads((out / "lit_qsum_export.json").read_text())
    assert info["trained_backend"] == "lora" and info["generation"]["max_new_tokens"] == MAX_NEW
    with module.model.disable_adapter():
        base_ids = greedy(module.model, batch, **GREEDY)
        base_logits = logits(module.model, batch)
    assert (base_logits - logits(merged, batch)).abs().max() > 1.0
    assert not torch.equal(base_ids, ids)


def test_adapter_export_loads_with_plain_peft(lora_ckpt: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = export(lora_ckpt, tmp_path / "adapter", "--merge", "false")
    info = json.loads((out / "base_model.json").read_text())
    # a random-init base has no hub name: it travels along in base/, so the export works offline anywhere
    assert info["base_model_name_or_path"] == "base" and info["base_bundled"] is True
    assert info["model_config"]["model_type"] == "t5"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(out / "base"), str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)

    module = module_from(lora_ckpt)
    batch = dev_batch()
    ids = greedy(model, batch, **GREEDY)
    assert torch.equal(ids, greedy(module.model, batch, **GREEDY))
    assert decode_summaries(tokenizer, ids) == module.generate(batch)


def korean_batch(tmp_path: Path, size: int = 20) -> dict:
    """The first ``size`` Korean dialogues of the bundled dev split, as one predict batch."""
    import csv

    from lit_qsum.data.synthetic import bundled_path

    with open(bundled_path("dev"), encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if any("\uac00" <= ch <= "\ud7a3" for ch in r["dialogue"])][:size]
    assert len(rows) == size
    path = tmp_path / "ko.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["fname", "dialogue"])
        writer.writeheader()
        writer.writerows({"fname": r["fname"], "dialogue": r["dialogue"]} for r in rows)
    dm = SummarizationDataModule(predict_path=str(path), task="seq2seq", encoder_max_len=256, decoder_max_len=64,
                                 eval_batch_size=size)
    dm.setup("predict")
    return next(iter(dm.predict_dataloader()))


@pytest.fixture(scope="module")
def long_summaries_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 steps: the model repeats itself until ``max_new_tokens`` (32), past transformers' default max_length 20."""
    return fit(tmp_path_factory.mktemp("long"), 60, "--model.generation.max_new_tokens", "32")


@pytest.mark.parametrize("merge", ["true", "false"])
def test_each_export_loaded_as_its_load_with_line_says_reproduces_20_korean_summaries(
    long_summaries_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], merge: str
) -> None:
    """A bare ``generate()`` on the export, loaded with the printed line, writes lit-qsum's summaries."""
    lora_ckpt = long_summaries_ckpt
    import peft
    import transformers

    capsys.readouterr()
    out = export(lora_ckpt, tmp_path / "export", "--merge", merge)
    [load_with] = [line.removeprefix("load with: ") for line in capsys.readouterr().out.splitlines()
                   if line.startswith("load with: ")]
    model = eval(load_with, {"transformers": transformers, "peft": peft}).eval()  # noqa: S307 - our own line
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)

    module = module_from(lora_ckpt)
    batch = korean_batch(tmp_path)
    expected = module.generate(batch)
    with torch.no_grad():
        ids = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert decode_summaries(tokenizer, ids) == expected
    assert max(len(tokenizer(s).input_ids) for s in expected) > 20  # long enough that max_length 20 would cut them


def test_adapter_folder_missing_or_stale(lora_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    expected = load_file(export(lora_ckpt, tmp_path / "from_folder") / "model.safetensors")
    alone = tmp_path / "alone" / "best.ckpt"  # the .ckpt without its .adapter/ folder: its own LoRA weights serve
    alone.parent.mkdir()
    shutil.copy(lora_ckpt, alone)
    got = load_file(export(alone, tmp_path / "from_ckpt") / "model.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    stale = tmp_path / "stale" / "best.ckpt"  # an adapter folder from another save than the .ckpt
    shutil.copytree(lora_ckpt.parent, stale.parent)
    weights_file = stale.parent / "best.adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    save_file({k: v + 1 if "lora_B" in k else v for k, v in weights.items()}, weights_file)
    with pytest.raises(SystemExit):
        export(stale, tmp_path / "never")
    assert "best.adapter" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_qlora_checkpoint_merges_into_the_full_precision_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    """QLoRA trains against NF4-rounded base weights; the export merges into the original float32 ones.

    So the export can't equal the 4-bit training model exactly: it differs by the NF4 rounding of the
    base, the gap the base alone shows with and without 4-bit loading. Checked: (1) the merge itself is
    exact (logits equal float32 base + the trained adapter through peft), (2) the export is no further
    from the QLoRA model than the float32 base is from the NF4 base, far less than the adapter's own
    effect, and the greedy next token (teacher-forced, so one flip can't derail the rest) agrees on
    >= 90% of summary positions. Measured here: mean |logit diff| 0.07 vs the bases' 0.13 and the
    adapter's 0.9; 98% of tokens agree.
    """
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from lit_qsum.backends.loader import resolve_checkpoint
    from lit_qsum.checkpoint_io import adapter_dir

    ckpt = fit(tmp_path_factory.mktemp("qlora"), 10, "--model.backend", "qlora")
    assert torch.load(ckpt, weights_only=False)["lit_qsum"]["backend"] == "qlora"
    out = export(ckpt, tmp_path_factory.mktemp("qlora_export") / "merged")
    merged = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())  # no 4-bit weights left

    module = module_from(ckpt)  # the 4-bit model lit-qsum trained and predicts with
    assert any("4bit" in type(m).__name__ for m in module.model.modules())
    batch = dev_batch(8)
    base_path, _ = resolve_checkpoint(module.spec, module.tokenizer)
    fp32_base = AutoModelForSeq2SeqLM.from_pretrained(base_path).eval()
    got, want, base = logits(merged, batch), logits(module.model, batch), logits(fp32_base, batch)
    with module.model.disable_adapter():
        nf4_base = logits(module.model, batch)
    fp32_with_adapter = PeftModel.from_pretrained(fp32_base, str(adapter_dir(ckpt))).eval()
    torch.testing.assert_close(got, logits(fp32_with_adapter, batch), atol=1e-4, rtol=1e-4)

    summary = batch["labels"] != -100

    def mean_gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs()[summary].mean())

    assert mean_gap(got, want) <= 1.5 * mean_gap(base, nf4_base)
    assert mean_gap(got, want) < 0.25 * mean_gap(got, base)
    agree = (got.argmax(-1) == want.argmax(-1))[summary].float().mean()
    assert agree >= 0.9, f"greedy tokens agree on only {agree:.0%} of positions"


def test_full_fine_tune_exports_its_weights(tmp_path_factory: pytest.TempPathFactory, capsys) -> None:
    from transformers import AutoModelForSeq2SeqLM

    ckpt = fit(tmp_path_factory.mktemp("full"), 3, "--model.backend", "full")
    out = export(ckpt, tmp_path_factory.mktemp("full_export") / "merged")
    merged = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    for name, value in merged.state_dict().items():
        assert torch.equal(value, state[f"model.{name}"]), name
    module = module_from(ckpt)
    batch = dev_batch()
    torch.testing.assert_close(logits(merged, batch), logits(module.model, batch))
    with pytest.raises(SystemExit):
        export(ckpt, tmp_path_factory.mktemp("full_adapter") / "adapter", "--merge", "false")
    assert "--merge false" in capsys.readouterr().err


def test_decode_drops_special_tokens_but_keeps_speaker_tags() -> None:
    from lit_qsum.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("lit_qsum:demo")
    # a tokenizer that registers DialogSum's tags as special tokens, as some fine-tuning recipes do
    tokenizer.add_special_tokens({"additional_special_tokens": ["#Person1#", "#Person2#", "#PhoneNumber#"]})
    assert "#Person1#" in tokenizer.all_special_tokens
    text = "#Person1# 은 #PhoneNumber# 로 #Person2# 에게 예약을 한다."
    ids = tokenizer(text).input_ids  # ends with </s>
    pad, unk = tokenizer.pad_token_id, tokenizer.unk_token_id
    row = [pad, *ids[:3], unk, *ids[3:], pad, pad]
    assert tokenizer.decode(row, skip_special_tokens=True).split()[0] != "#Person1#"  # what plain decoding does
    assert decode_summaries(tokenizer, [row]) == [text]
    spaced = tokenizer("  #Person2#   는   동의한다.  ").input_ids
    (summary,) = decode_summaries(tokenizer, torch.tensor([spaced]))
    assert summary == "#Person2# 는 동의한다."
    for token in ("<pad>", "</s>", "<unk>"):
        assert token not in summary


def test_bad_inputs_name_the_flag(lora_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(*args: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main(["export", *args])
        assert exc.value.code == 2
        return capsys.readouterr().err

    assert "--ckpt_path" in error("--ckpt_path", str(tmp_path / "nope.ckpt"), "--output_dir", str(tmp_path / "x"))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    assert "not a lit-qsum checkpoint" in error("--ckpt_path", str(other), "--output_dir", str(tmp_path / "x"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    err = error("--ckpt_path", str(lora_ckpt), "--output_dir", str(taken))
    assert "--output_dir" in err and "--overwrite true" in err
    assert (taken / "keep.txt").read_text() == "mine"
    # never over the checkpoint's own folder, even with --overwrite
    own_folder = str(lora_ckpt.parent)
    assert "--output_dir" in error("--ckpt_path", str(lora_ckpt), "--output_dir", own_folder, "--overwrite", "true")
    assert not list(tmp_path.glob(".x.*")) and not list(tmp_path.glob(".taken.*"))  # no temp dirs left behind
    export(lora_ckpt, taken, "--overwrite", "true")
    assert (taken / "model.safetensors").is_file() and not (taken / "keep.txt").exists()
