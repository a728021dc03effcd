"""Batch-one inference of a small policy network inside the loop: a GRU cell and a linear head
on preallocated tensors with static shapes — every intermediate written into a buffer made at
construction (`out=`), so a steady-state step allocates nothing and its time does not wander
with the allocator. Its recurrent state is a plain tensor, snapshotted with the loop's."""

from __future__ import annotations

import torch


class StaticPolicy:
    """obs [obs_dim] -> action [act_dim], with a hidden state [hidden] carried across steps."""

    def __init__(self, obs_dim: int, hidden: int, act_dim: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        scale = hidden ** -0.5

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen) * scale

        self.w_ih, self.w_hh, self.b = w(3 * hidden, obs_dim), w(3 * hidden, hidden), w(3 * hidden)
        self.w_out, self.b_out = w(act_dim, hidden), w(act_dim)
        self.hidden = torch.zeros(hidden)
        self.obs = torch.zeros(obs_dim)  # the caller writes its observation here
        self.action = torch.zeros(act_dim)  # and reads the action here
        self._gi, self._gh = torch.empty(3 * hidden), torch.empty(3 * hidden)
        self._rz, self._n = torch.empty(2 * hidden), torch.empty(hidden)

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """One step from `self.obs`; the action in `self.action` (the same tensor each time)."""
        h, n = self.hidden, self.hidden.shape[0]
        torch.addmv(self.b, self.w_ih, self.obs, out=self._gi)
        torch.mv(self.w_hh, h, out=self._gh)
        torch.add(self._gi[:2 * n], self._gh[:2 * n], out=self._rz)
        torch.sigmoid(self._rz, out=self._rz)
        r, z = self._rz[:n], self._rz[n:]
        torch.mul(r, self._gh[2 * n:], out=self._n)
        self._n.add_(self._gi[2 * n:]).tanh_()
        # h = (1 - z) * n + z * h  ==  n + z * (h - n)
        h.sub_(self._n).mul_(z).add_(self._n)
        torch.addmv(self.b_out, self.w_out, h, out=self.action)
        return self.action

    def reference(self, obs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The same step written plainly (allocating): what the buffered one must equal."""
        n = hidden.shape[0]
        gi, gh = self.b + self.w_ih @ obs, self.w_hh @ hidden
        r = torch.sigmoid(gi[:n] + gh[:n])
        z = torch.sigmoid(gi[n:2 * n] + gh[n:2 * n])
        cand = torch.tanh(gi[2 * n:] + r * gh[2 * n:])
        h = (1 - z) * cand + z * hidden
        return self.b_out + self.w_out @ h, h
