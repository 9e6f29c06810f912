"""An independent, straightforward CAP4D MMDM UNet in plain torch, working directly on LDM-named tensors.

Written for the tests from the network's description (LDM's UNetModel with CAP4D's changes), without
diffusers, so that a golden fixture made with it checks our diffusers-based UNet independently. It also
lists the LDM keys and shapes of a configuration (:func:`ldm_shapes`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _res_shapes(p: str, cin: int, cout: int, emb: int) -> dict[str, list[int]]:
    s = {f"{p}.in_layers.0.weight": [cin], f"{p}.in_layers.0.bias": [cin],
         f"{p}.in_layers.2.weight": [cout, cin, 3, 3], f"{p}.in_layers.2.bias": [cout],
         f"{p}.emb_layers.1.weight": [cout, emb], f"{p}.emb_layers.1.bias": [cout],
         f"{p}.out_layers.0.weight": [cout], f"{p}.out_layers.0.bias": [cout],
         f"{p}.out_layers.3.weight": [cout, cout, 3, 3], f"{p}.out_layers.3.bias": [cout]}
    if cin != cout:
        s.update({f"{p}.skip_connection.weight": [cout, cin, 1, 1], f"{p}.skip_connection.bias": [cout]})
    return s


def _attn_shapes(p: str, c: int) -> dict[str, list[int]]:
    b = f"{p}.transformer_blocks.0"
    return {f"{p}.norm.weight": [c], f"{p}.norm.bias": [c], f"{p}.proj_in.weight": [c, c], f"{p}.proj_in.bias": [c],
            f"{b}.attn1.to_q.weight": [c, c], f"{b}.attn1.to_k.weight": [c, c], f"{b}.attn1.to_v.weight": [c, c],
            f"{b}.attn1.to_out.0.weight": [c, c], f"{b}.attn1.to_out.0.bias": [c],
            f"{b}.ff.net.0.proj.weight": [8 * c, c], f"{b}.ff.net.0.proj.bias": [8 * c],
            f"{b}.ff.net.2.weight": [c, 4 * c], f"{b}.ff.net.2.bias": [c],
            f"{b}.norm1.weight": [c], f"{b}.norm1.bias": [c], f"{b}.norm3.weight": [c], f"{b}.norm3.bias": [c],
            f"{p}.proj_out.weight": [c, c], f"{p}.proj_out.bias": [c]}


def _plan(cfg: dict) -> tuple[list, list, int]:
    """(input block specs, output block specs, final channels); a spec lists (kind, args)."""
    mc, mults, nres, att = cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"], cfg["attention_resolutions"]
    inputs, chans, ch, ds = [[("conv_in",)]], [mc], mc, 1
    for lvl, m in enumerate(mults):
        for _ in range(nres):
            blk = [("res", ch, m * mc)]
            ch = m * mc
            if ds in att:
                blk.append(("attn", ch, m >= 2))
            inputs.append(blk)
            chans.append(ch)
        if lvl != len(mults) - 1:
            inputs.append([("down", ch)])
            chans.append(ch)
            ds *= 2
    outputs = []
    for lvl, m in list(enumerate(mults))[::-1]:
        for i in range(nres + 1):
            blk = [("res", ch + chans.pop(), m * mc)]
            ch = m * mc
            if ds in att:
                blk.append(("attn", ch, m >= 2))
            if lvl and i == nres:
                blk.append(("up", ch))
                ds //= 2
            outputs.append(blk)
    return inputs, outputs, ch


def ldm_shapes(cfg: dict) -> dict[str, list[int]]:
    """Every LDM key (``model.diffusion_model.*``) and shape of a CAP4D UNet configuration."""
    mc, emb = cfg["model_channels"], 4 * cfg["model_channels"]
    s = {"time_embed.0.weight": [emb, mc], "time_embed.0.bias": [emb], "time_embed.2.weight": [emb, emb],
         "time_embed.2.bias": [emb], "input_blocks.0.0.weight": [mc, cfg["in_channels"], 3, 3],
         "input_blocks.0.0.bias": [mc], "cond_linear.weight": [mc, cfg["condition_channels"]],
         "cond_linear.bias": [mc]}
    inputs, outputs, _ = _plan(cfg)
    for i, blk in enumerate(inputs[1:], start=1):
        for j, spec in enumerate(blk):
            p = f"input_blocks.{i}.{j}"
            if spec[0] == "res":
                s.update(_res_shapes(p, spec[1], spec[2], emb))
            elif spec[0] == "attn":
                s.update(_attn_shapes(p, spec[1]))
            else:
                s.update({f"{p}.op.weight": [spec[1], spec[1], 3, 3], f"{p}.op.bias": [spec[1]]})
    top = mc * cfg["channel_mult"][-1]
    s.update(_res_shapes("middle_block.0", top, top, emb))
    s.update(_attn_shapes("middle_block.1", top))
    s.update(_res_shapes("middle_block.2", top, top, emb))
    for i, blk in enumerate(outputs):
        for j, spec in enumerate(blk):
            p = f"output_blocks.{i}.{j}"
            if spec[0] == "res":
                s.update(_res_shapes(p, spec[1], spec[2], emb))
            elif spec[0] == "attn":
                s.update(_attn_shapes(p, spec[1]))
            else:
                s.update({f"{p}.conv.weight": [spec[1], spec[1], 3, 3], f"{p}.conv.bias": [spec[1]]})
    s.update({"out.0.weight": [mc], "out.0.bias": [mc], "out.2.weight": [cfg["out_channels"], mc, 3, 3],
              "out.2.bias": [cfg["out_channels"]]})
    return {"model.diffusion_model." + k: v for k, v in s.items()}


class ReferenceMMDM:
    """Forward of the CAP4D UNet straight from an LDM state dict (float32, plain torch ops)."""

    def __init__(self, cfg: dict, state: dict[str, torch.Tensor]):
        self.cfg = cfg
        self.w = {k.removeprefix("model.diffusion_model."): v.float() for k, v in state.items()}

    def _gn(self, x, p, eps=1e-5):
        return F.group_norm(x.float(), 32, self.w[p + ".weight"], self.w[p + ".bias"], eps)

    def _res(self, x, emb, p):
        h = F.conv2d(F.silu(self._gn(x, p + ".in_layers.0")), self.w[p + ".in_layers.2.weight"],
                     self.w[p + ".in_layers.2.bias"], padding=1)
        h = h + F.linear(F.silu(emb), self.w[p + ".emb_layers.1.weight"], self.w[p + ".emb_layers.1.bias"])[..., None, None]
        h = F.conv2d(F.silu(self._gn(h, p + ".out_layers.0")), self.w[p + ".out_layers.3.weight"],
                     self.w[p + ".out_layers.3.bias"], padding=1)
        skip = x if p + ".skip_connection.weight" not in self.w else F.conv2d(
            x, self.w[p + ".skip_connection.weight"], self.w[p + ".skip_connection.bias"])
        return skip + h

    def _attn(self, x, p, joint: bool, views: int):
        n_img, c, hh, ww = x.shape
        heads = c // self.cfg["num_head_channels"]
        d = c // heads
        h = self._gn(x, p + ".norm", eps=1e-6).permute(0, 2, 3, 1).reshape(n_img, hh * ww, c)
        h = F.linear(h, self.w[p + ".proj_in.weight"], self.w[p + ".proj_in.bias"])
        b = p + ".transformer_blocks.0"
        y = F.layer_norm(h, (c,), self.w[b + ".norm1.weight"], self.w[b + ".norm1.bias"])
        q, k, v = (F.linear(y, self.w[f"{b}.attn1.to_{n}.weight"]) for n in "qkv")
        groups = n_img // views if joint else n_img
        q, k, v = (t.reshape(groups, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
        att = att.transpose(1, 2).reshape(n_img, hh * ww, c)
        h = h + F.linear(att, self.w[b + ".attn1.to_out.0.weight"], self.w[b + ".attn1.to_out.0.bias"])
        y = F.layer_norm(h, (c,), self.w[b + ".norm3.weight"], self.w[b + ".norm3.bias"])
        a, gate = F.linear(y, self.w[b + ".ff.net.0.proj.weight"], self.w[b + ".ff.net.0.proj.bias"]).chunk(2, dim=-1)
        h = h + F.linear(a * F.gelu(gate), self.w[b + ".ff.net.2.weight"], self.w[b + ".ff.net.2.bias"])
        h = F.linear(h, self.w[p + ".proj_out.weight"], self.w[p + ".proj_out.bias"])
        return x + h.reshape(n_img, hh, ww, c).permute(0, 3, 1, 2)

    def _block(self, blk, x, emb, p, views):
        for j, spec in enumerate(blk):
            q = f"{p}.{j}"
            if spec[0] == "conv_in":
                x = F.conv2d(x, self.w[q + ".weight"], self.w[q + ".bias"], padding=1)
            elif spec[0] == "res":
                x = self._res(x, emb, q)
            elif spec[0] == "attn":
                x = self._attn(x, q, spec[2], views)
            elif spec[0] == "down":
                x = F.conv2d(x, self.w[q + ".op.weight"], self.w[q + ".op.bias"], stride=2, padding=1)
            else:
                x = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), self.w[q + ".conv.weight"],
                             self.w[q + ".conv.bias"], padding=1)
        return x

    @torch.no_grad()
    def __call__(self, x, t, z_input, ref_mask, pos_enc):
        b, v = x.shape[:2]
        ref = ref_mask.bool()
        h = torch.where(ref, z_input, x).reshape(b * v, *x.shape[2:])
        mc = self.cfg["model_channels"]
        half = mc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.reshape(-1).float()[:, None] * freqs[None]
        temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        emb = F.linear(F.silu(F.linear(temb, self.w["time_embed.0.weight"], self.w["time_embed.0.bias"])),
                       self.w["time_embed.2.weight"], self.w["time_embed.2.bias"])
        cond = F.linear(pos_enc.reshape(b * v, *pos_enc.shape[2:]), self.w["cond_linear.weight"],
                        self.w["cond_linear.bias"]).permute(0, 3, 1, 2)
        inputs, outputs, _ = _plan(self.cfg)
        hs = []
        for i, blk in enumerate(inputs):
            h = self._block(blk, h, emb, f"input_blocks.{i}", v)
            if i == 0:
                h = h + cond
            hs.append(h)
        joint_mid = self.cfg["channel_mult"][-1] >= 2
        h = self._res(h, emb, "middle_block.0")
        h = self._attn(h, "middle_block.1", joint_mid, v)
        h = self._res(h, emb, "middle_block.2")
        for i, blk in enumerate(outputs):
            h = self._block(blk, torch.cat([h, hs.pop()], dim=1), emb, f"output_blocks.{i}", v)
        h = F.conv2d(F.silu(self._gn(h, "out.0")), self.w["out.2.weight"], self.w["out.2.bias"], padding=1)
        h = h.reshape(b, v, *h.shape[1:])
        return torch.where(ref, x - z_input, h)
