"""CAP4D weights: every key of the public checkpoint maps; conversion is exact and atomic; bad files refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from backend.cap4d.checkpoint import read_checkpoint, split_checkpoint, unet_upstream_config_from_shapes
from backend.cap4d.config import sd21_upstream_config
from backend.cap4d.weights import check_weights, load_cap4d, models_from_checkpoint
from backend.cap4d.weights_cli import main as weights_main
from backend.errors import MVP4DError

from .cap4d_tiny import meta_checkpoint, tiny_state, write_tiny_checkpoint


def test_all_830_public_keys_map_with_nothing_missing_or_left_over():
    state = meta_checkpoint()
    assert len(state) == 830
    parts = split_checkpoint(state)
    assert len(parts.unet) + len(parts.vae) + len(parts.renderer) + len(parts.dropped) == 830
    assert sorted(parts.dropped) == ["cond_stage_model.pos_encoding.freqs", "logvar"]
    cfg = unet_upstream_config_from_shapes(parts.unet)
    assert {k: cfg[k] for k in sd21_upstream_config()} == sd21_upstream_config()
    unet, vae = models_from_checkpoint(parts)  # strict: raises on any missing, unused or misshapen key
    n_unet = sum(p.numel() for p in unet.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    assert round(n_unet / 1e6, 2) == 815.55 and round(n_vae / 1e6, 2) == 83.65
    assert sum(v.numel() for v in parts.unet.values()) == n_unet
    assert sum(v.numel() for v in parts.vae.values()) == n_vae
    assert list(unet.config.attention_head_dim) == [5, 10, 20, 20]
    assert all(getattr(m, "attn2", None) is None for m in unet.modules() if hasattr(m, "attn1"))


def test_a_missing_or_misshapen_key_is_named():
    state = meta_checkpoint()
    key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn1.to_k.weight"
    del state[key]
    with pytest.raises(MVP4DError) as e:
        models_from_checkpoint(split_checkpoint(state))
    assert e.value.code == "WEIGHTS_MISMATCH" and "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k" in e.value.message
    state = meta_checkpoint()
    state["model.diffusion_model.cond_linear.weight"] = torch.empty(320, 59, device="meta")
    with pytest.raises(MVP4DError) as e:
        models_from_checkpoint(split_checkpoint(state))
    assert e.value.code == "WEIGHTS_MISMATCH" and "cond_linear.weight" in e.value.message
    state = meta_checkpoint()
    state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.empty(
        320, 1024, device="meta")
    with pytest.raises(MVP4DError) as e:
        models_from_checkpoint(split_checkpoint(state))
    assert "attn2.to_k" in e.value.message
    state = meta_checkpoint()
    state["model.diffusion_model.input_blocks.1.0.extra_gate.weight"] = torch.empty(320, device="meta")
    with pytest.raises(MVP4DError) as e:
        models_from_checkpoint(split_checkpoint(state))
    assert "extra_gate" in e.value.message


def test_stable_diffusion_checkpoint_is_refused():
    state = {k: v for k, v in meta_checkpoint().items() if "cond_linear" not in k and "cond_stage_model" not in k}
    state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.empty(3072, 1024, device="meta")
    with pytest.raises(MVP4DError) as e:
        split_checkpoint(state)
    assert e.value.code == "WEIGHTS_MISMATCH" and "cond_stage_model.model.transformer" in e.value.message
    assert "Stable Diffusion" in e.value.message


def test_convert_roundtrip_is_exact(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "weights"
    assert weights_main(["convert", "--from", str(ckpt), "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "cap4d-mmdm" and "CC BY-NC" in info["licence"]
    assert check_weights(out)["kind"] == "folder"
    a, b = load_cap4d(out), load_cap4d(ckpt)
    for (ka, va), (kb, vb) in zip(sorted(a.unet.state_dict().items()), sorted(b.unet.state_dict().items())):
        assert ka == kb and torch.equal(va, vb)
    for k, v in tiny_state().items():
        if k.startswith("cond_stage_model.renderer."):
            assert torch.equal(a.geometry[k.rsplit(".", 1)[1]], v)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 8, 8, generator=g)
    args = (x, torch.tensor([[10, 500, 999]]), torch.randn(x.shape, generator=g),
            torch.tensor([1, 0, 0]).reshape(1, 3, 1, 1, 1), torch.randn(1, 3, 8, 8, 50, generator=g))
    with torch.no_grad():
        oa, ob = a.unet(*args), b.unet(*args)
        assert torch.allclose(oa, ob, atol=1e-6, rtol=0)  # same tensors; float noise from memory layout only
        img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        assert torch.allclose(a.vae.encode(img).latent_dist.mean, b.vae.encode(img).latent_dist.mean, atol=1e-6)
    assert a.vae.config.scaling_factor == pytest.approx(0.18215)
    # an existing folder is never overwritten
    assert weights_main(["convert", "--from", str(ckpt), "--out", str(out)]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["code"] == "BAD_INPUT"


def _no_partials(folder: Path) -> bool:
    return not any(p.name.startswith(".") for p in folder.iterdir())


def test_truncated_checkpoint_is_invalid_and_nothing_is_written(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    data = ckpt.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    assert weights_main(["convert", "--from", str(bad), "--out", str(tmp_path / "w")]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["code"] == "WEIGHTS_INVALID"
    assert not (tmp_path / "w").exists() and _no_partials(tmp_path)


class _Payload:
    """Unpickling this would create a marker file (the code a hostile checkpoint could run)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.ckpt"
    torch.save({"model.diffusion_model.x": torch.zeros(1), "payload": _Payload(str(marker))}, bad)
    with pytest.raises(MVP4DError) as e:
        read_checkpoint(bad)
    assert e.value.code == "WEIGHTS_INVALID" and "refused" in e.value.message
    assert not marker.exists()


def test_missing_checkpoint_and_folder(tmp_path):
    with pytest.raises(MVP4DError) as e:
        load_cap4d(tmp_path / "nope.ckpt")
    assert e.value.code == "WEIGHTS_MISSING"
    (tmp_path / "empty").mkdir()
    with pytest.raises(MVP4DError) as e:
        check_weights(tmp_path / "empty")
    assert e.value.code == "WEIGHTS_MISSING" and "cap4d.json" in e.value.message


def test_latents_are_a_scaled_posterior_sample(tmp_path):
    from backend.cap4d.latents import decode_latents, encode_images

    vae = load_cap4d(write_tiny_checkpoint(tmp_path / "tiny.ckpt")).vae
    img = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    z1 = encode_images(vae, img, torch.Generator().manual_seed(7), chunk=2)
    z2 = encode_images(vae, img, torch.Generator().manual_seed(7))
    z3 = encode_images(vae, img, torch.Generator().manual_seed(8))
    assert z1.shape == (3, 4, 4, 4) and torch.allclose(z1, z2, atol=1e-6) and not torch.allclose(z1, z3)
    with torch.no_grad():
        dist = vae.encode(img * 2 - 1).latent_dist
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(z1, (dist.mean + dist.std * noise) * 0.18215, atol=1e-5)
    out = decode_latents(vae, z1)
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1


def test_garbage_file_is_invalid_without_unsafe_advice(tmp_path):
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(MVP4DError) as e:
        read_checkpoint(bad)
    assert e.value.code == "WEIGHTS_INVALID" and "weights_only" not in e.value.message + e.value.hint
