"""Frozen FSDP units reshard after their own backward (``reshard_frozen_units_in_backward``), and the root after the
backward of its own layers (``reshard_root_after_its_own_backward``), with the same gradients.

FSDP reshards an all-frozen unit once the gradients of its inputs are complete. T5's and BART's decoder blocks all
take the encoder's output, whose gradient is complete only after the last decoder block's backward: without the
fix every decoder block stays gathered through the decoder's backward (on an H200, t5-xl under FSDP used more
memory per GPU than on one GPU). Counted here on 2 CPU processes (gloo) during a real backward with checkpointing.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import ddp_harness as ddp

DECODER_LAYERS = 4
SHAPES = {
    "t5": dict(model_type="t5", vocab_size=64, d_model=16, d_ff=32, d_kv=4, num_heads=4, num_layers=2,
               num_decoder_layers=DECODER_LAYERS, feed_forward_proj="gated-gelu", dropout_rate=0.0,
               decoder_start_token_id=0, pad_token_id=0),
    "bart": dict(model_type="bart", vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=DECODER_LAYERS,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32,
                 dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
}


def _rank(rank: int, port: int, results, kind: str) -> None:
    import transformers
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from lit_qsum.distributed.fsdp import (
        own_block_inputs,
        qlora_auto_wrap_policy,
        reshard_frozen_units_in_backward,
        reshard_root_after_its_own_backward,
    )

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out = {}
        for fix in (False, True):
            torch.manual_seed(0)
            fields = dict(SHAPES[kind])
            model = transformers.AutoModelForSeq2SeqLM.from_config(
                transformers.AutoConfig.for_model(fields.pop("model_type"), **fields))
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            targets = ["q", "v", "wo"] if kind == "t5" else ["q_proj", "v_proj", "fc2"]
            model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
            own_block_inputs(model)  # as the module does on every strategy: aliases inside the units don't help FSDP
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            trainable = [p for _, p in named]
            sharded = FSDP(model, auto_wrap_policy=qlora_auto_wrap_policy(model), ignored_states=trainable,
                           device_id=torch.device("cpu"), use_orig_params=True)
            hooked = reshard_frozen_units_in_backward(sharded) if fix else 0
            watched = reshard_root_after_its_own_backward(sharded) if fix else 0
            handles = [m._handle for m in sharded.modules() if isinstance(m, FSDP) and m._handle is not None]
            root = sharded._handle
            gathered: list[int] = []
            root_in_encoder: list[bool] = []

            def is_gathered(handle) -> bool:
                return handle.flat_param._full_param_padded.untyped_storage().size() > 0

            def count(_, name, handles=handles, gathered=gathered, root_in_encoder=root_in_encoder, root=root) -> None:
                # units whose full (unsharded) parameters are allocated while a LoRA gradient lands
                gathered.append(sum(is_gathered(h) for h in handles))
                if ".encoder." in name:
                    root_in_encoder.append(is_gathered(root))

            for name, p in named:
                p.register_post_accumulate_grad_hook(lambda p, name=name: count(p, name))
            generator = torch.Generator().manual_seed(rank)
            for _ in range(2):  # a second step: the root, resharded early, is gathered again by the next forward
                sharded.zero_grad(set_to_none=True)
                gathered.clear()
                root_in_encoder.clear()
                ids = torch.randint(2, 64, (2, 7), generator=generator)
                labels = torch.randint(2, 64, (2, 5), generator=generator)
                sharded(input_ids=ids, labels=labels).loss.backward()
            grads = [p.grad.clone() for p in trainable]
            out[fix] = (hooked, len(handles), max(gathered), grads, watched, list(root_in_encoder),
                        is_gathered(root))
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_frozen_decoder_blocks_reshard_after_their_own_backward_with_the_same_gradients(kind: str) -> None:
    results = ddp.spawn_pair(_rank, kind)
    for rank in range(2):
        out = results[rank]
        (_, units, before, want, _, root_before, _) = out[False]
        (hooked, _, after, got, watched, root_after, root_at_end) = out[True]
        assert hooked == units - 1  # every unit but the root
        # without: the root, every decoder block and the prefetched next one are gathered together at the peak
        assert before >= DECODER_LAYERS + 1, before
        # with: the root, the block in backward and the one prefetched
        assert after <= 3, after
        # the root: gathered through the encoder's backward without the fix; with it, T5's root (embedding / LM head,
        # final norms) is resharded before the encoder's backward. BART's root also owns the encoder's
        # layernorm_embedding, whose input requires grad (peft's input-grad hook for checkpointing) and whose
        # backward comes last, so there the root stays gathered until the end, as before.
        assert watched >= 1 and root_before and root_after
        assert all(root_before), root_before
        if kind == "t5":
            assert not any(root_after), root_after
        assert not root_at_end  # and FSDP's end-of-backward left it resharded
        # bitwise the same gradients: the aliases outside the units sum nothing the blocks' own aliases don't
        assert all(torch.equal(g, w) for g, w in zip(got, want))
