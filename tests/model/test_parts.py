import torch

from qdit4sr_export.model import build_dit4sr
from qdit4sr_export.model.parts import BASE, CONTROL, UNUSED_ATTN2_ADDED_KV, list_linears, parameter_part


def test_medium_counts_from_shapes_alone():
    model = build_dit4sr("dit4sr-medium", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 2_716_814_144
    blocks = [lin for lin in list_linears(model) if lin.in_blocks]
    assert len(blocks) == 585
    assert sum(lin.in_features + lin.out_features for lin in blocks) == 2_652_672
    assert sum(lin.in_features * lin.out_features for lin in blocks) == 2_694_316_032
    assert tuple(model.pos_embed.pos_embed.shape) == (1, 147456, 1536)
    by_part = {BASE: 0, CONTROL: 0, UNUSED_ATTN2_ADDED_KV: 0}
    for name, p in model.named_parameters():
        by_part[parameter_part(name)] += p.numel()
    assert by_part[UNUSED_ATTN2_ADDED_KV] == 122_764_928


def test_parameter_part_examples():
    assert parameter_part("transformer_blocks.3.attn.to_k_control.weight") == CONTROL
    assert parameter_part("transformer_blocks.12.attn2.to_out_control.bias") == CONTROL
    assert parameter_part("transformer_blocks.0.ff.control_conv.weight") == CONTROL
    assert parameter_part("transformer_blocks.5.attn2.add_k_proj.weight") == UNUSED_ATTN2_ADDED_KV
    assert parameter_part("transformer_blocks.5.attn2.norm_added_q.weight") == UNUSED_ATTN2_ADDED_KV
    assert parameter_part("transformer_blocks.5.attn.add_k_proj.weight") == BASE
    assert parameter_part("transformer_blocks.3.ff.net.2.weight") == BASE
    assert parameter_part("pos_embed.proj.weight") == BASE


def test_list_linears_matches_modules():
    model = build_dit4sr("dit4sr-tiny", device="meta")
    names = [lin.name for lin in list_linears(model)]
    assert names == [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert "transformer_blocks.0.attn2.to_add_out" in names
    assert "transformer_blocks.2.attn.to_add_out" not in names  # last block is context_pre_only
