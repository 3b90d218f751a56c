import torch

from ssa_rvos.modeling.trajectory import apply_permutation, match_trajectories


def test_chaining_recovers_known_permutations():
    torch.manual_seed(0)
    N, C, T = 6, 32, 5
    objects = torch.randn(N, C)
    # Frame t shows object perms[t][i] in query slot i; none of these is its own inverse.
    perms = [torch.arange(N), torch.tensor([1, 2, 0, 4, 5, 3]), torch.tensor([2, 0, 1, 5, 3, 4]),
             torch.tensor([3, 4, 5, 1, 2, 0]), torch.tensor([1, 2, 3, 4, 5, 0])]
    for p in perms[1:]:
        assert not torch.equal(p[p], torch.arange(N))
    # Objects drift a little from frame to frame, so each frame only resembles its neighbour.
    drift = torch.cumsum(0.05 * torch.randn(T, N, C), 0)
    frames = torch.stack([(objects + drift[t])[perms[t]] for t in range(T)])[None]  # (1, T, N, C)

    perm = match_trajectories(frames)
    assert perm.shape == (1, T, N)
    for t in range(T):
        # Slot j must hold object j in every frame: perm[t] = inverse(perms[t]).
        torch.testing.assert_close(perm[0, t], torch.argsort(perms[t]))
    aligned = apply_permutation(frames, perm)
    torch.testing.assert_close(aligned[0] - drift, objects.expand(T, N, C), atol=1e-5, rtol=0)


def test_batch_entries_are_matched_independently():
    torch.manual_seed(2)
    a = torch.randn(1, 3, 4, 8)
    b = a[:, :, [1, 0, 3, 2]].clone()
    b[:, 2] = b[:, 2, [2, 3, 0, 1]]
    both = match_trajectories(torch.cat([a, b]))
    torch.testing.assert_close(both[0], match_trajectories(a)[0])
    torch.testing.assert_close(both[1], match_trajectories(b)[0])
