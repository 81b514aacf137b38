"""IdentityTokens (PARTID_IDENTITY): per-group weights, joining, and what the apply side attends to."""
from __future__ import annotations

import pytest
import torch

from partid.models.attention.decoupled import IdentityKeysValues, identity_attention
from partid.models.identity_tokens import IdentityTokens, concat


def tokens(r=1, groups=("face", "upper"), size=3, width=8, source="visual_persona", seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = len(groups) * size
    return IdentityTokens(torch.randn(r, t, width, generator=gen), torch.randn(1, t, width, generator=gen),
                          tuple(groups), (size,) * len(groups), (1.0,) * len(groups), source)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="add up"):
        IdentityTokens(torch.zeros(1, 5, 8), torch.zeros(1, 5, 8), ("a",), (4,), (1.0,), "x")
    with pytest.raises(ValueError, match="do not fit"):
        IdentityTokens(torch.zeros(2, 4, 8), torch.zeros(3, 4, 8), ("a",), (4,), (1.0,), "x")


def test_weights_set_by_label_and_scale_per_token():
    ident = tokens().with_weights({"face": 0.5, "shoes": 3.0})
    assert ident.weights == (0.5, 1.0)
    assert torch.equal(ident.token_scale(), torch.tensor([0.5] * 3 + [1.0] * 3))


def test_for_attention_drops_zero_groups_and_puts_references_side_by_side():
    ident = tokens(r=2).with_weights({"face": 0.0, "upper": 2.0})
    cond, uncond, scale = ident.for_attention()
    assert torch.equal(cond[0], torch.cat([ident.cond[0, 3:], ident.cond[1, 3:]]))
    assert torch.equal(uncond[0], ident.uncond[0, 3:].repeat(2, 1)) and torch.equal(scale, torch.full((6,), 2.0))
    assert tokens().with_weights({"face": 0, "upper": 0}).for_attention() is None


def test_repeated_uncond_tokens_attend_as_one_copy():
    ident = tokens(r=3).with_weights({"face": 0.5})
    _, uncond, scale = ident.for_attention()
    q = torch.randn(1, 5, 8)
    one = ident.uncond
    ref = identity_attention(q, [IdentityKeysValues(one, one, 1.0, ident.token_scale())], heads=2)
    rep = identity_attention(q, [IdentityKeysValues(uncond, uncond, 1.0, scale)], heads=2)
    torch.testing.assert_close(rep, ref, atol=1e-6, rtol=1e-5)


def test_concat():
    a, b = tokens(r=2, seed=1), tokens(groups=("lower",), seed=2).with_weights({"lower": 0.3})
    joined = concat(a, b)
    assert joined.groups == ("face", "upper", "lower") and joined.weights == (1.0, 1.0, 0.3)
    assert joined.cond.shape == (2, 9, 8) and torch.equal(joined.cond[1, 6:], b.cond[0])
    assert joined.uncond.shape == (1, 9, 8)
    with pytest.raises(ValueError, match="own apply node"):
        concat(a, tokens(source="consistentid"))
    with pytest.raises(ValueError, match="wide"):
        concat(a, tokens(width=4))
    with pytest.raises(ValueError, match="references"):
        concat(a, tokens(r=3))


def test_identity_file_round_trip_and_refusals(tmp_path):
    """save_identity writes a real .safetensors that load_identity reads back exactly; other files are refused
    with a message saying what is wrong."""
    from safetensors.torch import save_file

    from partid.models.errors import ModelFileError
    from partid.models.identity_file import load_identity, save_identity

    ident = tokens(r=2, groups=("face", "upper", "shoes"), size=4).with_weights({"upper": 2.0, "shoes": 0.0})
    path = tmp_path / "sub" / "person_00001_.safetensors"
    save_identity(ident, str(path))
    back = load_identity(str(path))
    assert torch.equal(back.cond, ident.cond) and torch.equal(back.uncond, ident.uncond)
    assert (back.groups, back.sizes, back.weights, back.source) == (ident.groups, ident.sizes, ident.weights,
                                                                    ident.source)
    a, b = ident.for_attention(), back.for_attention()
    assert all(torch.equal(x, y) for x, y in zip(a, b))

    plain = tmp_path / "plain.safetensors"
    save_file({"cond": torch.zeros(1, 4, 8), "uncond": torch.zeros(1, 4, 8)}, str(plain))
    with pytest.raises(ModelFileError, match="not a PartID identity file"):
        load_identity(str(plain))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"cond": torch.zeros(1, 4, 8), "uncond": torch.zeros(1, 4, 8)}, str(wrong),
              metadata={"format": "partid-identity", "version": "1", "source": "x", "groups": '["a"]',
                        "sizes": "[3]", "weights": "[1.0]"})
    with pytest.raises(ModelFileError, match="does not describe its tokens.*add up"):
        load_identity(str(wrong))
    newer = tmp_path / "newer.safetensors"
    save_file({"cond": torch.zeros(1, 4, 8), "uncond": torch.zeros(1, 4, 8)}, str(newer),
              metadata={"format": "partid-identity", "version": "2"})
    with pytest.raises(ModelFileError, match="version '2'"):
        load_identity(str(newer))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError, match="not a readable .safetensors"):
        load_identity(str(broken))
    with pytest.raises(ModelFileError, match=r"\.safetensors written by PartID Save Identity"):
        load_identity(str(tmp_path / "person.pt"))
