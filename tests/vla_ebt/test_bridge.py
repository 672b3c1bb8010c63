"""Bridge: projection to the head width, bounded prefix length, and masks respected."""

from __future__ import annotations

import pytest
import torch

from vla_ebt.backbones import PrefixOutput
from vla_ebt.bridge import Bridge, BridgeConfig, masked_bin_average


def _prefix(b: int, t: int, d: int, valid: list[int]) -> PrefixOutput:
    tokens = torch.randn(b, t, d)
    mask = torch.arange(t)[None, :] < torch.tensor(valid)[:, None]
    return PrefixOutput(tokens=tokens, mask=mask)


@pytest.mark.parametrize("pooling", ["attention", "avg"])
def test_short_prefix_passes_through(pooling) -> None:
    bridge = Bridge(48, BridgeConfig(width=32, max_prefix_tokens=16, pooling=pooling))
    prefix = _prefix(2, 10, 48, [10, 6])
    out = bridge(prefix)
    assert out.tokens.shape == (2, 10, 32)
    assert torch.equal(out.mask, prefix.mask)
    assert (out.tokens[1, 6:] == 0).all()


@pytest.mark.parametrize("pooling", ["attention", "avg"])
@pytest.mark.parametrize("t", [17, 300])
def test_long_prefix_is_bounded(pooling, t) -> None:
    bridge = Bridge(48, BridgeConfig(width=32, max_prefix_tokens=16, pooling=pooling))
    out = bridge(_prefix(3, t, 48, [t, t // 2, 5]))
    assert out.tokens.shape == (3, 16, 32)
    assert out.mask.shape == (3, 16)
    assert torch.isfinite(out.tokens).all()
    assert out.mask[0].all()


@pytest.mark.parametrize("pooling", ["attention", "avg"])
@pytest.mark.parametrize("t", [12, 100])
def test_masked_token_content_is_ignored(pooling, t) -> None:
    torch.manual_seed(0)
    bridge = Bridge(24, BridgeConfig(width=32, max_prefix_tokens=16, pooling=pooling))
    prefix = _prefix(2, t, 24, [t, t // 3])
    corrupted = prefix.tokens.clone()
    corrupted[~prefix.mask] = torch.randn(int((~prefix.mask).sum()), 24) * 1e4
    corrupted[1, -1] = float("nan")
    a = bridge(prefix)
    b = bridge(PrefixOutput(tokens=corrupted, mask=prefix.mask))
    torch.testing.assert_close(a.tokens, b.tokens)
    assert torch.equal(a.mask, b.mask)
    # ...while a valid token's content does change the output.
    changed = prefix.tokens.clone()
    changed[1, 0] += 1.0
    c = bridge(PrefixOutput(tokens=changed, mask=prefix.mask))
    assert (c.tokens[1] - a.tokens[1]).abs().max() > 1e-4
    torch.testing.assert_close(c.tokens[0], a.tokens[0])


def test_fully_masked_row_gives_masked_zeros() -> None:
    bridge = Bridge(8, BridgeConfig(width=16, max_prefix_tokens=4))
    out = bridge(_prefix(2, 10, 8, [10, 0]))
    assert torch.isfinite(out.tokens).all()
    assert out.mask[0].all() and not out.mask[1].any()
    assert (out.tokens[1] == 0).all()


def test_always_pool_fixes_length() -> None:
    bridge = Bridge(8, BridgeConfig(width=16, max_prefix_tokens=6, always_pool=True))
    assert bridge(_prefix(2, 4, 8, [4, 2])).tokens.shape == (2, 6, 16)
    assert bridge(_prefix(2, 9, 8, [9, 2])).tokens.shape == (2, 6, 16)


def test_masked_bin_average_matches_manual_mean() -> None:
    tokens = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    mask = torch.tensor([[True, False, True, True, False, False]])
    pooled, pooled_mask = masked_bin_average(tokens, mask, 3)  # bins {0,1} {2,3} {4,5}
    torch.testing.assert_close(pooled[0, 0], tokens[0, 0])
    torch.testing.assert_close(pooled[0, 1], tokens[0, 2:4].mean(0))
    assert pooled_mask.tolist() == [[True, True, False]]
    assert (pooled[0, 2] == 0).all()


def test_gradients_reach_parameters() -> None:
    bridge = Bridge(8, BridgeConfig(width=16, max_prefix_tokens=4, norm="layer"))
    prefix = _prefix(2, 10, 8, [10, 7])
    prefix.tokens.requires_grad_(True)
    bridge(prefix).tokens.sum().backward()
    for name, param in bridge.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert (prefix.tokens.grad[1, 7:] == 0).all()  # masked inputs get no gradient


def test_bad_config_rejected() -> None:
    with pytest.raises(ValueError, match="pooling"):
        Bridge(8, BridgeConfig(pooling="max"))
    with pytest.raises(ValueError, match="norm"):
        Bridge(8, BridgeConfig(norm="batch"))


def test_fusion_layer_makes_image_tokens_depend_on_the_instruction_but_not_on_padding() -> None:
    torch.manual_seed(0)
    bridge = Bridge(16, BridgeConfig(width=32, max_prefix_tokens=64, fusion_layers=1, heads=4)).eval()
    plain = Bridge(16, BridgeConfig(width=32, max_prefix_tokens=64, fusion_layers=0, heads=4)).eval()
    plain.load_state_dict(bridge.state_dict(), strict=False)
    tokens = torch.randn(2, 10, 16)  # tokens 0-5 "image", 6-9 "text"; token 9 of sample 1 is padding
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 9] = False
    other_text = tokens.clone()
    other_text[:, 6:8] = torch.randn(2, 2, 16)
    other_pad = tokens.clone()
    other_pad[1, 9] = 1e3
    with torch.no_grad():
        base = bridge(PrefixOutput(tokens, mask)).tokens
        changed = bridge(PrefixOutput(other_text, mask)).tokens
        padded = bridge(PrefixOutput(other_pad, mask)).tokens
        unfused = plain(PrefixOutput(tokens, mask)).tokens, plain(PrefixOutput(other_text, mask)).tokens
    assert not torch.allclose(base[:, :6], changed[:, :6])  # image tokens see the text
    torch.testing.assert_close(unfused[0][:, :6], unfused[1][:, :6])  # without fusion they cannot
    torch.testing.assert_close(base, padded)  # padding never leaks in
    assert (base[1, 9] == 0).all()
