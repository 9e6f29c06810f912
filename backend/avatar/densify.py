"""Triangle-bound Gaussian parameters, their Adam optimisers, and densification (clone/split/prune).

:class:`GaussianStore` keeps the learnable tensors of the Gaussians in triangle-local form (one Adam per
tensor, like gsplat's strategies) together with each Gaussian's parent triangle; growing or pruning
updates parameters and optimiser moments together. :class:`DensifyStrategy` is a small analogue of
gsplat's ``DefaultStrategy`` adapted to bound Gaussians: it accumulates the screen-space gradient of
each Gaussian's 2-D mean (normalised by half the image size, so thresholds are resolution-free) and,
every ``refine_every`` iterations inside ``[refine_start, refine_stop)``, clones small Gaussians and
splits large ones whose average gradient exceeds ``grow_grad2d`` (children stay on the parent's
triangle; split samples are drawn from the Gaussian in *local* units), prunes transparent ones and,
after the first opacity reset, huge ones; every ``reset_every`` iterations it lowers all opacities.
A cap (``max_gaussians``) keeps CPU fits bounded: when more grow than fit, the largest gradients win.
"""

from __future__ import annotations

import math

import torch

from .losses import quat_to_matrix
from .settings import DensifyStrategy  # defined with the other settings (torch-free)

PARAM_NAMES = ("local_position", "local_rotation", "log_scale", "opacity_logit", "sh_dc", "sh_rest")


class GaussianStore:
    """Learnable triangle-local Gaussians + one Adam per tensor.

    ``params``: name -> leaf tensor (``PARAM_NAMES``); ``parent_face`` (N,) long; ``lrs`` the base
    learning rate per name.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], parent_face: torch.Tensor, lrs: dict[str, float]):
        self.params = {k: torch.nn.Parameter(tensors[k].detach().clone().float().contiguous()) for k in PARAM_NAMES}
        self.parent_face = parent_face.detach().clone().long()
        self.lrs = dict(lrs)
        self.optimizers = {k: torch.optim.Adam([p], lr=self.lrs[k], eps=1e-15) for k, p in self.params.items()}

    def __len__(self) -> int:
        return int(self.parent_face.shape[0])

    @property
    def sh(self) -> torch.Tensor:
        return torch.cat([self.params["sh_dc"], self.params["sh_rest"]], dim=1)

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def set_lr(self, name: str, lr: float) -> None:
        for g in self.optimizers[name].param_groups:
            g["lr"] = lr

    # ---- structural edits ---------------------------------------------------------------------
    def _replace(self, name: str, new: torch.Tensor, state_fn) -> None:
        opt = self.optimizers[name]
        old = self.params[name]
        p = torch.nn.Parameter(new.detach().contiguous())
        st = opt.state.pop(old, None)
        if st is not None:
            st = {k: (state_fn(v) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
            opt.state[p] = st
        opt.param_groups[0]["params"] = [p]
        self.params[name] = p

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only Gaussians where ``mask`` (N,) bool is true."""
        for k in PARAM_NAMES:
            self._replace(k, self.params[k][mask], lambda v: v[mask])
        self.parent_face = self.parent_face[mask]

    def append(self, tensors: dict[str, torch.Tensor], parent_face: torch.Tensor) -> None:
        """Add Gaussians; their optimiser moments start at zero."""
        for k in PARAM_NAMES:
            add = tensors[k].detach().to(self.params[k])
            self._replace(k, torch.cat([self.params[k].detach(), add]),
                          lambda v, n=len(add): torch.cat([v, v.new_zeros((n, *v.shape[1:]))]))
        self.parent_face = torch.cat([self.parent_face, parent_face.long()])

    def select(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: self.params[k].detach()[idx].clone() for k in PARAM_NAMES}

    def reset_opacity(self, value: float) -> None:
        cap = math.log(value / (1 - value))
        with torch.no_grad():
            new = self.params["opacity_logit"].clamp(max=cap)
        self._replace("opacity_logit", new, torch.zeros_like)

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and Adam moments as flat named tensors (for safetensors)."""
        out = {f"param.{k}": p.detach().clone() for k, p in self.params.items()}
        out["parent_face"] = self.parent_face.clone()
        for k, opt in self.optimizers.items():
            st = opt.state.get(self.params[k], {})
            for sk, v in st.items():
                out[f"adam.{k}.{sk}"] = torch.as_tensor(v).detach().clone().reshape(v.shape if torch.is_tensor(v) else ())
        return out

    @classmethod
    def from_state(cls, t: dict[str, torch.Tensor], lrs: dict[str, float]) -> "GaussianStore":
        store = cls({k: t[f"param.{k}"] for k in PARAM_NAMES}, t["parent_face"], lrs)
        for k in PARAM_NAMES:
            keys = [n for n in t if n.startswith(f"adam.{k}.")]
            if keys:
                store.optimizers[k].state[store.params[k]] = {n.split(".")[-1]: t[n].clone() for n in keys}
        return store


class DensifyState:
    """Running statistics for one :class:`DensifyStrategy` (checkpointed with the fit)."""

    def __init__(self, n: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.grad2d = torch.zeros(n, device=self.device)
        self.count = torch.zeros(n, device=self.device)

    def accumulate(self, idx: torch.Tensor, means2d_grad: torch.Tensor, visible: torch.Tensor,
                   width: int, height: int) -> None:
        """Add the normalised 2-D gradient norms of the rendered Gaussians ``idx`` (one camera)."""
        g = means2d_grad.detach().clone()
        g[..., 0] *= width / 2.0
        g[..., 1] *= height / 2.0
        norm = g.norm(dim=-1)
        vis = visible.bool()
        self.grad2d.index_add_(0, idx[vis], norm[vis])
        self.count.index_add_(0, idx[vis], torch.ones_like(norm[vis]))

    def reset(self, n: int) -> None:
        self.grad2d = torch.zeros(n, device=self.device)
        self.count = torch.zeros(n, device=self.device)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"densify.grad2d": self.grad2d.clone(), "densify.count": self.count.clone()}

    def load(self, t: dict[str, torch.Tensor]) -> None:
        self.grad2d = t["densify.grad2d"].clone().to(self.device)
        self.count = t["densify.count"].clone().to(self.device)


def refine(store: GaussianStore, state: DensifyState, strategy: DensifyStrategy, step: int,
           world_scale_max: torch.Tensor, extent: float, generator: torch.Generator) -> dict[str, int]:
    """Apply the strategy after optimiser step ``step`` (1-based count of finished steps)."""
    stats = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
    s = strategy
    if s.refine_start <= step < s.refine_stop and step % s.refine_every == 0 and len(store):
        avg = state.grad2d / state.count.clamp_min(1)
        grow = avg > s.grow_grad2d
        room = max(s.max_gaussians - len(store), 0)
        if int(grow.sum()) > room:  # the largest gradients win the remaining budget
            order = torch.argsort(torch.where(grow, avg, torch.full_like(avg, -1.0)), descending=True)
            grow = torch.zeros_like(grow)
            grow[order[:room]] = True
        big = world_scale_max > s.grow_scale3d * extent
        clone_idx = torch.nonzero(grow & ~big).ravel()
        split_idx = torch.nonzero(grow & big).ravel()
        n0 = len(store)
        if len(clone_idx):
            store.append(store.select(clone_idx), store.parent_face[clone_idx])
        if len(split_idx):
            _split(store, split_idx, strategy.split_shrink, generator)
        stats["cloned"], stats["split"] = len(clone_idx), len(split_idx)
        keep = torch.ones(len(store), dtype=torch.bool, device=store.parent_face.device)
        keep[split_idx] = False  # originals replaced by their two children
        opa = torch.sigmoid(store.params["opacity_logit"].detach())
        keep &= opa >= s.prune_opa
        if step > s.reset_every:
            ws = torch.cat([world_scale_max, world_scale_max.new_full((len(store) - n0,), 0.0)])
            keep &= ws <= s.prune_scale3d * extent
        if (~keep).any() and keep.any():
            stats["pruned"] = int((~keep).sum())
            store.keep(keep)
        state.reset(len(store))
    if s.reset_every > 0 and step % s.reset_every == 0 and step < s.refine_stop:
        store.reset_opacity(s.prune_opa * 2.0)
        stats["reset"] = 1
    return stats


def _split(store: GaussianStore, idx: torch.Tensor, shrink: float, generator: torch.Generator) -> None:
    """Two children per Gaussian, positions sampled from it in local units; scales / ``shrink``."""
    t = store.select(idx)
    scale = torch.exp(t["log_scale"])  # (M, 3) local units
    R = quat_to_matrix(t["local_rotation"])  # (M, 3, 3)
    children = []
    for _ in range(2):
        eps = torch.randn(scale.shape, generator=generator).to(scale.device)
        c = dict(t)
        c["local_position"] = t["local_position"] + (R @ (scale * eps)[..., None])[..., 0]
        c["log_scale"] = t["log_scale"] - math.log(shrink)
        children.append(c)
    both = {k: torch.cat([children[0][k], children[1][k]]) for k in t}
    store.append(both, torch.cat([store.parent_face[idx]] * 2))


__all__ = ["GaussianStore", "DensifyStrategy", "DensifyState", "refine", "PARAM_NAMES"]
