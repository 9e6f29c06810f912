"""MMVDM weight folders (build from CogVideoX, save/load, errors), the VAE wrapper and the bench, on tiny models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
from safetensors.torch import load_file, save_file

from backend.errors import MVP4DError
from backend.mmvdm import MMVDMTransformer, MMVDMVae, build_mmvdm_from_cogvideox, load_mmvdm, save_mmvdm, tiny_config
from backend.mmvdm.configs import tiny_vae_config

STOCK_KEYS = ("conditioning_channels", "attention_scale_mode", "base_token_count")
SCHEDULER = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=3.0,
                 timestep_spacing="trailing", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 set_alpha_to_one=True, clip_sample=False)


@pytest.fixture(scope="module")
def cogvideox_dir(tmp_path_factory):
    """A tiny CogVideoX diffusers folder written by diffusers itself; the transformer sharded and fp16."""
    root = tmp_path_factory.mktemp("cogvideox")
    torch.manual_seed(0)
    stock = CogVideoXTransformer3DModel(**{k: v for k, v in tiny_config().items() if k not in STOCK_KEYS})
    for p in stock.parameters():
        p.data.normal_(0, 0.3)
    stock.to(torch.float16).save_pretrained(root / "transformer", safe_serialization=True, max_shard_size="20KB")
    AutoencoderKLCogVideoX(**tiny_vae_config()).save_pretrained(root / "vae", safe_serialization=True)
    CogVideoXDDIMScheduler(**SCHEDULER).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def mmvdm_dir(cogvideox_dir, tmp_path_factory):
    return build_mmvdm_from_cogvideox(cogvideox_dir, tmp_path_factory.mktemp("built") / "mmvdm",
                                      conditioning_channels=59, dtype=torch.bfloat16)


def code_of(fn) -> MVP4DError:
    with pytest.raises(MVP4DError) as e:
        fn()
    return e.value


def test_build_from_sharded_cogvideox_copies_every_tensor(cogvideox_dir, mmvdm_dir):
    assert len(list((cogvideox_dir / "transformer").glob("*-of-*.safetensors"))) > 1
    assert sorted(p.name for p in mmvdm_dir.iterdir()) == ["mmvdm.json", "scheduler", "transformer", "vae"]
    info = json.loads((mmvdm_dir / "mmvdm.json").read_text())
    assert (info["format"], info["format_version"], info["conditioning_channels"]) == ("mmvdm", 1, 59)
    assert not list(mmvdm_dir.parent.glob(".*.part"))  # the temporary build folder is gone
    comps = load_mmvdm(mmvdm_dir)
    t = comps.transformer
    assert isinstance(t, MMVDMTransformer) and t.dtype == torch.bfloat16
    assert (t.config.in_channels, t.config.conditioning_channels) == (4, 59)
    assert not any(p.is_meta for p in t.parameters())
    src = CogVideoXTransformer3DModel.from_pretrained(cogvideox_dir / "transformer", local_files_only=True,
                                                      use_safetensors=True).state_dict()
    dst = t.state_dict()
    for name, value in src.items():
        if name == "patch_embed.proj.weight":
            assert torch.equal(dst[name][:, :4], value.to(torch.bfloat16))
            assert dst[name].shape[1] == 63 and not dst[name][:, 4:].any()
        else:
            assert torch.equal(dst[name], value.to(torch.bfloat16)), name
    assert comps.scheduler_config["prediction_type"] == "v_prediction"
    CogVideoXDDIMScheduler.from_config(comps.scheduler_config)
    assert comps.vae.config.latent_channels == 4


def test_zero_init_channels_leave_output_unchanged(mmvdm_dir):
    model = load_mmvdm(mmvdm_dir, dtype=torch.float32).transformer
    torch.manual_seed(3)
    x = torch.randn(1, 2, 3, 4, 8, 8)
    ref = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        zero = model(x, 700, reference=ref, conditioning=torch.zeros(1, 2, 3, 59, 8, 8),
                     reference_conditioning=torch.zeros(1, 59, 8, 8)).sample
        rand = model(x, 700, reference=ref, conditioning=torch.randn(1, 2, 3, 59, 8, 8),
                     reference_conditioning=torch.randn(1, 59, 8, 8)).sample
        none = model(x, 700, reference=ref).sample
    assert torch.equal(zero, rand)
    torch.testing.assert_close(none, zero, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_save_load_round_trip_is_exact(tmp_path, dtype):
    torch.manual_seed(1)
    model = MMVDMTransformer.from_config(tiny_config(conditioning_channels=5, attention_scale_mode="entropy"))
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    model = model.to(dtype).eval()
    vae = AutoencoderKLCogVideoX(**tiny_vae_config()).eval()
    folder = save_mmvdm(tmp_path / "w", model, vae, SCHEDULER, {"note": "test"}, max_shard_size="30KB")
    comps = load_mmvdm(folder)
    loaded = comps.transformer
    assert loaded.dtype == dtype and loaded.config.attention_scale_mode == "entropy"
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    for name, value in vae.state_dict().items():
        assert torch.equal(comps.vae.state_dict()[name], value), name
    x = torch.randn(1, 1, 2, 4, 4, 4, dtype=dtype)
    with torch.no_grad():  # identical tensors; sharded files give other memory alignment, so CPU kernels may
        # round differently in the last bit (6e-8 seen in fp32)
        torch.testing.assert_close(loaded(x, 5, reference=x[:, 0, 0]).sample, model(x, 5, reference=x[:, 0, 0]).sample,
                                   atol=1e-6, rtol=1e-6)
    assert comps.info["note"] == "test"
    assert load_mmvdm(folder, dtype=torch.float32).transformer.dtype == torch.float32


def test_missing_weights(tmp_path, mmvdm_dir):
    e = code_of(lambda: load_mmvdm(tmp_path / "nowhere"))
    assert e.code == "WEIGHTS_MISSING" and "transformer/" in e.hint
    broken = tmp_path / "novae"
    shutil.copytree(mmvdm_dir, broken)
    shutil.rmtree(broken / "vae")
    e = code_of(lambda: load_mmvdm(broken))
    assert e.code == "WEIGHTS_MISSING" and "vae/" in e.message
    pickled = tmp_path / "pickled"
    shutil.copytree(mmvdm_dir, pickled)
    for f in (pickled / "transformer").glob("*.safetensors*"):
        f.unlink()
    (pickled / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    e = code_of(lambda: load_mmvdm(pickled))
    assert e.code == "WEIGHTS_MISSING" and ".bin" in e.message
    e = code_of(lambda: build_mmvdm_from_cogvideox(tmp_path / "nowhere", tmp_path / "out"))
    assert e.code == "WEIGHTS_MISSING" and "CogVideoX" in e.message


def _edit_config(folder, sub, **changes):
    path = folder / sub / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_mismatched_weights_name_the_tensor_or_field(tmp_path, mmvdm_dir):
    wrong_cc = tmp_path / "cc"
    shutil.copytree(mmvdm_dir, wrong_cc)
    _edit_config(wrong_cc, "transformer", conditioning_channels=12)
    e = code_of(lambda: load_mmvdm(wrong_cc))
    assert e.code == "WEIGHTS_MISMATCH" and "patch_embed.proj.weight" in e.message and "in_channels" in e.message

    wrong_vae = tmp_path / "vae"
    shutil.copytree(mmvdm_dir, wrong_vae)
    _edit_config(wrong_vae, "vae", latent_channels=16)
    e = code_of(lambda: load_mmvdm(wrong_vae))
    assert e.code == "WEIGHTS_MISMATCH" and "latent_channels" in e.message and "in_channels" in e.message

    corrupt = tmp_path / "corrupt"
    shutil.copytree(mmvdm_dir, corrupt)
    name = "transformer_blocks.1.attn1.to_k.weight"
    for f in (corrupt / "transformer").glob("*.safetensors"):
        tensors = load_file(f)
        if name in tensors:
            tensors[name] = tensors[name][:, :-1].contiguous()
            save_file(tensors, f, metadata={"format": "pt"})
    e = code_of(lambda: load_mmvdm(corrupt))
    assert e.code == "WEIGHTS_MISMATCH" and name in e.message

    truncated = tmp_path / "truncated"
    shutil.copytree(mmvdm_dir, truncated)
    f = next((truncated / "vae").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:100])
    assert code_of(lambda: load_mmvdm(truncated)).code == "WEIGHTS_MISMATCH"


def test_cogvideox_folder_is_not_an_mmvdm_folder(cogvideox_dir):
    e = code_of(lambda: load_mmvdm(cogvideox_dir))
    assert e.code == "WEIGHTS_MISMATCH" and "CogVideoXTransformer3DModel" in e.message


def test_vae_wrapper_shapes_scaling_and_frame_rule():
    torch.manual_seed(0)
    raw = AutoencoderKLCogVideoX(**tiny_vae_config()).eval()
    vae = MMVDMVae(raw)
    videos = torch.rand(2, 9, 3, 16, 16) * 2 - 1
    z = vae.encode_views(videos)
    assert z.shape == (2, 3, 4, 2, 2) and z.dtype == torch.float32
    assert torch.equal(z, vae.encode_views(videos))  # posterior mode: deterministic
    with torch.no_grad():
        expected = raw.encode(videos.permute(0, 2, 1, 3, 4)).latent_dist.mode() * raw.config.scaling_factor
    torch.testing.assert_close(z, expected.permute(0, 2, 1, 3, 4))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(vae.encode_views(videos, sample=True, generator=g1),
                       vae.encode_views(videos, sample=True, generator=g2))
    ref = vae.encode_reference(videos[:, 0])
    assert ref.shape == (2, 4, 2, 2)
    vae.enable_slicing()
    torch.testing.assert_close(vae.encode_views(videos), z, atol=1e-5, rtol=1e-5)
    frames = vae.decode_views(z)
    assert frames.shape == (2, 9, 3, 16, 16) and frames.abs().max() <= 1
    assert vae.decode_views(ref[:, None]).shape == (2, 1, 3, 16, 16)
    assert code_of(lambda: vae.encode_views(videos[:, :8])).code == "BAD_INPUT"
    assert code_of(lambda: vae.decode_views(z[:, :2])).code == "BAD_INPUT"  # even latent count
    assert code_of(lambda: vae.encode_reference(videos[:, 0, :, :12])).code == "BAD_INPUT"


def test_bench_tiny_returns_json(capsys):
    from backend.mmvdm.bench import main, run_bench

    result = run_bench("tiny", views=2, frames=5, res=32, dtype="fp32", attention="native", steps=1, device="cpu")
    json.dumps(result)
    assert result["tokens"] == (1 + 2 * 2) * 2 * 2
    for key in ("seconds_per_forward", "flops_per_forward", "achieved_tflops", "matmul_tflops",
                "fraction_of_matmul", "parameters"):
        assert result[key] > 0, key
    assert main(["--size", "tiny", "--views", "1", "--frames", "1", "--res", "16", "--steps", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tokens"] == 2 and printed["output_shape"] == [1, 1, 1, 4, 2, 2]


def test_weights_init_writes_a_loadable_seeded_random_folder_and_refuses_an_existing_one(tmp_path, capsys):
    from backend.cli import main as cli_main
    from backend.mmvdm.weights import check_weights, load_mmvdm

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli_main(["weights", "init", "--size", "tiny", "--out", str(a)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["initialised"] == str(a)
    assert cli_main(["weights", "init", "--out", str(b)]) == 0
    assert cli_main(["weights", "init", "--out", str(c), "--seed", "1"]) == 0
    info = check_weights(a)
    assert json.loads((a / "mmvdm.json").read_text())["source"] == "random"
    ma, mb, mc = (load_mmvdm(f).transformer.state_dict() for f in (a, b, c))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)  # same seed, same weights
    assert any(not torch.equal(ma[k], mc[k]) for k in ma)
    assert info is not None
    before = sorted(p.name for p in a.rglob("*"))
    capsys.readouterr()
    assert cli_main(["weights", "init", "--out", str(a)]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["code"] == "OUTPUT_EXISTS"
    assert sorted(p.name for p in a.rglob("*")) == before


def test_bench_memory_counts_what_the_forward_allocates():
    """The peak the bench reports (CPU: growth of the process's peak RSS) includes a forward's buffers."""
    from types import SimpleNamespace

    from backend.mmvdm.bench import time_forward

    mib = 2**20

    def forward(latents, timestep, **_):  # a stand-in forward that touches 96 MiB and frees it
        buf = torch.ones(96 * mib // 4)
        return SimpleNamespace(sample=latents + buf[:1])

    inputs = {"latents": torch.zeros(1), "timestep": torch.zeros(1), "ref": None, "cond": None, "ref_cond": None}
    result = time_forward(forward, inputs, steps=1)
    assert result["peak_memory_bytes"] >= 90 * mib, result["peak_memory_bytes"] / mib
    assert result["output"].shape == (1,) and result["seconds"] > 0
