"""Trajectory matching for sequential object alignment (paper Sec. 3.4).

Frame queries carry no identity from frame to frame. Chaining a Hungarian assignment between
consecutive frames, on the cosine distance to the previous frame's *already re-ordered*
queries, turns slot j of every frame into one object's trajectory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def match_trajectories(queries: Tensor) -> Tensor:
    """queries: (B, T, N, C) -> permutation (B, T, N) long, with frame 0 the identity.

    Slot j of frame t is query ``perm[b, t, j]`` of that frame: ``queries.gather`` with it gives
    the aligned trajectories.
    """
    B, T, N, _ = queries.shape
    perm = torch.empty(B, T, N, dtype=torch.long)
    perm[:, 0] = torch.arange(N)
    if T > 1:
        unit = F.normalize(queries.detach().float(), dim=-1)
        # cos[b, t - 1, i, j]: current query i of frame t against query j of frame t - 1, both in
        # their original order; one transfer to the CPU for the whole video.
        cos = (unit[:, 1:] @ unit[:, :-1].transpose(-1, -2)).cpu().numpy()
        for b in range(B):
            prev = perm[b, 0].numpy()
            for t in range(1, T):
                # Rows: previous slots (in order), columns: current queries.
                cost = 1.0 - cos[b, t - 1][:, prev].T
                _, cols = linear_sum_assignment(cost)
                prev = cols
                perm[b, t] = torch.from_numpy(cols)
    return perm.to(queries.device)


def apply_permutation(x: Tensor, perm: Tensor) -> Tensor:
    """x: (B, T, N, ...) re-ordered along N by perm: (B, T, N)."""
    index = perm.reshape(*perm.shape, *([1] * (x.dim() - 3))).expand_as(x)
    return x.gather(2, index)
