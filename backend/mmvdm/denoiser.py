"""The model calls of one sampling step: v predictions for a multi-view set, with classifier-free
guidance and the composed (per-view video + per-frame multi-view) factorisation (:mod:`.sampler`)."""

from __future__ import annotations

import torch


def _chunks(xs: list[int], size: int | None) -> list[list[int]]:
    if not xs:
        return []
    size = len(xs) if not size or size < 1 else size
    return [xs[i : i + size] for i in range(0, len(xs), size)]


def _model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device) and dev.type != "meta":
        return dev
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


class _Denoiser:
    """v predictions of the model for one multi-view set, with CFG and the composed factorisation."""

    def __init__(self, model, reference, conditioning, reference_conditioning, clean_mask, guidance, scales,
                 sub_batch, attention_kwargs, composed_weight):
        self.model = model
        self.ref = reference
        self.cond = conditioning
        self.ref_cond = reference_conditioning
        self.zero_ref = None if reference is None else torch.zeros_like(reference)
        self.mask = clean_mask  # (V, T) bool, CPU
        self.guidance = guidance
        self.scales = scales  # (V,) float32 on device
        self.sub_batch = sub_batch
        self.attention_kwargs = attention_kwargs
        self.s = float(composed_weight)
        V, T = clean_mask.shape
        self.gen_views = [v for v in range(V) if not bool(clean_mask[v].all())]
        self.gen_frames = [t for t in range(T) if not bool(clean_mask[:, t].all())]
        self.use_cfg = guidance != "none" and bool((scales != 1.0).any())

    def _call(self, x, t, ref, cond, ref_cond) -> torch.Tensor:
        """x (B, V, T, C, h, w) float32 -> v (B, V, T, C, h, w) float32."""
        B = x.shape[0]
        ts = torch.full((B,), int(t), dtype=torch.long, device=x.device)
        out = self.model(hidden_states=x, timestep=ts, reference=ref, conditioning=cond,
                         reference_conditioning=ref_cond, attention_kwargs=self.attention_kwargs, return_dict=True)
        return out.sample.float()

    def _ref(self, B, uncond):
        r = self.zero_ref if uncond else self.ref
        if r is None:
            return None, None
        rc = None if (uncond or self.ref_cond is None) else self.ref_cond[None].expand(B, *self.ref_cond.shape)
        return r[None].expand(B, *r.shape), rc

    # -- factorisations -------------------------------------------------------------------------
    def joint(self, x, t, uncond=False):
        ref, rc = self._ref(1, uncond)
        cond = None if (uncond or self.cond is None) else self.cond[None]
        return self._call(x[None], t, ref, cond, rc)[0]

    def per_view(self, x, t, uncond=False, out=None):
        """Each generated view alone (all its frames): (V, T, ...) with rows of fully clean views = out/0."""
        out = torch.zeros_like(x) if out is None else out
        for ch in _chunks(self.gen_views, self.sub_batch):
            ref, rc = self._ref(len(ch), uncond)
            cond = None if (uncond or self.cond is None) else self.cond[ch][:, None]
            out[ch] = self._call(x[ch][:, None], t, ref, cond, rc)[:, 0]
        return out

    def per_frame(self, x, t, uncond=False):
        """All views at one latent frame each (T = 1 per forward)."""
        out = torch.zeros_like(x)
        for ch in _chunks(self.gen_frames, self.sub_batch):
            ref, rc = self._ref(len(ch), uncond)
            xb = x[:, ch].transpose(0, 1)[:, :, None]  # (B, V, 1, C, h, w)
            cond = None if (uncond or self.cond is None) else self.cond[:, ch].transpose(0, 1)[:, :, None]
            out[:, ch] = self._call(xb, t, ref, cond, rc)[:, :, 0].transpose(0, 1)
        return out

    def composed(self, x, t, uncond=False):
        return self.s * self.per_view(x, t, uncond) + (1.0 - self.s) * self.per_frame(x, t, uncond)

    # -- guided prediction ----------------------------------------------------------------------
    def predict(self, x, t, composed: bool):
        vc = self.composed(x, t) if composed else self.joint(x, t)
        if not self.use_cfg:
            return vc
        if self.guidance == "multiview":
            vu = self.per_view(x, t, uncond=True, out=vc.clone())
        elif composed:
            vu = self.composed(x, t, uncond=True)
        else:
            vu = self.joint(x, t, uncond=True)
        s = self.scales.view(-1, 1, 1, 1, 1)
        return vu + s * (vc - vu)
