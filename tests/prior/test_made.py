"""MADE (Germain et al. 2015): masks against the written-out definition, orderings, sampling."""

from __future__ import annotations

import itertools

import pytest
import torch

from prior import build_prior
from prior.made import made_order, sample_made


def make(order: str = "raster", shape: tuple[int, ...] = (2, 3), vocab: int = 3, hidden=(8, 7), seed: int = 0,
         num_classes: int = 0):
    torch.manual_seed(0)
    p = build_prior(arch="made", vocab_size=vocab, shape=shape, made_hidden=hidden, made_order=order,
                    made_seed=seed, num_classes=num_classes)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.5)
    return p.eval()


@pytest.mark.parametrize("order", ["raster", "random"])
def test_masks_match_the_definition(order: str) -> None:
    """Written out unit by unit: input unit (p, v) has degree o(p) in 1..L, hidden unit k has degree
    k mod L; W_hidden[k, j] allowed iff m(k) >= m(j) (Eq. 12); W_out[(p, v), k] iff o(p) > m(k) (Eq. 13)."""
    p = make(order, shape=(2, 3), vocab=3, hidden=(8, 7), seed=3)
    L, V = 6, 3
    o = made_order(p.config) + 1
    deg_io = [int(o[u // V]) for u in range(L * V)]  # unit u = position u // V, value u % V
    degs = [deg_io, [k % L for k in range(8)], [k % L for k in range(7)]]
    masks = [layer.mask for layer in p.net.layers]
    assert [tuple(m.shape) for m in masks] == [(8, 18), (7, 8), (18, 7)]
    for li in range(2):
        for k in range(masks[li].shape[0]):
            for j in range(masks[li].shape[1]):
                assert masks[li][k, j] == float(degs[li + 1][k] >= degs[li][j])
    for u in range(L * V):
        for k in range(7):
            assert masks[2][u, k] == float(deg_io[u] > degs[2][k])


@pytest.mark.parametrize("order", ["raster", "random"])
def test_connectivity_is_autoregressive(order: str) -> None:
    """Through the product of the masks, output (p, .) is reachable from input (q, .) iff o(q) < o(p)
    (every degree is present because the hidden layers are at least L wide)."""
    p = make(order, shape=(3, 3), vocab=2, hidden=(9, 9), seed=1)
    L, V = 9, 2
    path = p.net.layers[2].mask @ p.net.layers[1].mask @ p.net.layers[0].mask  # [L*V, L*V]
    reach = (path.reshape(L, V, L, V) > 0).any(3).any(1)  # [L out, L in]
    o = made_order(p.config)
    assert torch.equal(reach, o[None, :] < o[:, None])
    if order == "random":
        assert not torch.equal(o, torch.arange(L))


def test_masks_are_not_saved() -> None:
    p = make()
    assert not any(k.endswith("mask") or k.endswith("order") for k in p.state_dict())


def assert_normalised(p, num_classes: int) -> None:
    """sum over all 3**6 grids of shape (2, 3) of exp(log_prob) is 1, unconditionally or for every label."""
    grids = torch.tensor(list(itertools.product(range(3), repeat=6))).reshape(-1, 2, 3)
    for label in range(num_classes) if num_classes else [None]:
        lab = None if label is None else torch.full((729,), label)
        with torch.no_grad():
            lp = p.log_prob(grids, lab).double()
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-4


@pytest.mark.parametrize("num_classes", [0, 2])
def test_random_order_is_normalised_and_follows_its_order(num_classes: int) -> None:
    p = make("random", shape=(2, 3), vocab=3, seed=5, num_classes=num_classes)
    assert_normalised(p, num_classes)
    # perturbation: the logits at position i move only with tokens earlier in the MADE order
    o = made_order(p.config)
    x = torch.randint(0, 3, (4, 6))
    lab = torch.zeros(4, dtype=torch.long) if num_classes else None
    with torch.no_grad():
        base = p.net(x, lab)
        for j in range(6):
            y = x.clone()
            y[:, j] = (y[:, j] + 1) % 3
            changed = (p.net(y, lab) != base).any(-1).any(0)
            assert not changed[o <= o[j]].any()


def test_random_order_decodes_in_made_order_and_refuses_prefixes() -> None:
    p = make("random", seed=5)
    assert not p.net.supports_cache
    assert torch.equal(p.net.decode_order, torch.argsort(made_order(p.config)))
    a = p.sample(2, use_cache=True, generator=torch.Generator().manual_seed(1))
    b = p.sample(2, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="cannot score a prefix"):
        p.net(torch.zeros(1, 1, dtype=torch.long))


def test_sample_made_matches_the_model_distribution() -> None:
    """Draws in the MADE order follow exp(log_prob) (8 grids; a raster-order sampler would not)."""
    p = make("random", shape=(3,), vocab=2, hidden=(16,), seed=2)
    assert not torch.equal(made_order(p.config), torch.arange(3))
    grids = torch.tensor(list(itertools.product(range(2), repeat=3)))
    with torch.no_grad():
        probs = p.log_prob(grids).exp()
    x = p.sample(20000, generator=torch.Generator().manual_seed(0))  # Prior.sample follows decode_order
    counts = torch.stack([(x == g).all(1).sum() for g in grids]).double() / len(x)
    torch.testing.assert_close(counts, probs.double(), rtol=0, atol=0.015)


@pytest.mark.parametrize("settings", [dict(), dict(top_k=2, temperature=0.8), dict(labels=1, cfg_scale=2.0, top_p=0.9)])
def test_sample_made_equals_prior_sample_for_raster_order(settings: dict) -> None:
    p = make("raster", num_classes=2 if "labels" in settings else 0)
    a = sample_made(p, 6, generator=torch.Generator().manual_seed(3), **settings)
    for use_cache in (True, False):
        b = p.sample(6, generator=torch.Generator().manual_seed(3), use_cache=use_cache, **settings)
        assert torch.equal(a, b)


@pytest.mark.parametrize("num_classes", [0, 2])
def test_incremental_step_matches_forward(num_classes: int) -> None:
    p = make("raster", shape=(3, 4), vocab=5, hidden=(16, 16), num_classes=num_classes)
    x = torch.randint(0, 5, (3, 12))
    lab = torch.tensor([0, 2, 1]) if num_classes else None
    cache = p.net.init_cache(3, torch.device("cpu"))
    with torch.no_grad():
        full = p.net(x, lab)
        torch.testing.assert_close(p.net(x[:, :5], lab), full[:, :5], rtol=0, atol=0)
        for pos in range(12):
            torch.testing.assert_close(p.net.step(cache, x, pos, lab), full[:, pos], rtol=0, atol=1e-5)


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="made_hidden"):
        build_prior(arch="made", vocab_size=3, shape=(2, 3), made_hidden=())
    with pytest.raises(ValueError, match="sample_made needs a MADE"):
        sample_made(build_prior(arch="histogram", vocab_size=3, shape=(2, 3)), 1)


# ---------------------------------------------------------------------- order-agnostic (Germain et al. §4.2)
def make_agnostic(ensemble: int = 3, connectivity: bool = False, shape=(2, 3), vocab=3, hidden=(8, 7),
                  num_classes: int = 0, num_masks: int = 0):
    torch.manual_seed(0)
    p = build_prior(arch="made", vocab_size=vocab, shape=shape, made_hidden=hidden, made_order="agnostic",
                    made_ensemble=ensemble, made_connectivity_agnostic=connectivity, num_classes=num_classes,
                    made_num_masks=num_masks)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.5)  # mask-input weights too, so the Jacobian check sees them
    return p.eval()


@pytest.mark.parametrize("connectivity", [False, True])
@pytest.mark.parametrize("num_masks", [0, 4])
def test_agnostic_masks_are_autoregressive_for_every_ordering_drawn(connectivity: bool, num_masks: int,
                                                                    monkeypatch) -> None:
    """Every mask set the net builds (20 training updates and the K evaluation orderings) is recorded; for
    each, the product of the masks connects input q to output p only if o(q) < o(p) (exactly iff, with
    deterministic hidden degrees and layers at least L wide), and the Jacobian agrees: perturbing the token
    at q moves only outputs later in that ordering, mask-input terms included."""
    import prior.made as made

    drawn: list[list[torch.Tensor]] = []
    real = made.agnostic_degrees

    def record(config, k):
        deg = real(config, k)
        drawn.append(deg)
        return deg

    monkeypatch.setattr(made, "agnostic_degrees", record)
    p = make_agnostic(ensemble=3, connectivity=connectivity, shape=(3, 3), vocab=2, hidden=(9, 9),
                      num_masks=num_masks)
    L, V = 9, 2
    x = torch.randint(0, V, (16, L))
    p.train()
    for _ in range(20):
        p.loss(x.reshape(16, 3, 3)).backward()
    p.eval()
    with torch.no_grad():
        p.log_prob(x.reshape(16, 3, 3))
    assert len(drawn) >= (3 if num_masks else 20)
    orders = set()
    for deg in drawn:
        o = deg[0][::V] - 1  # rank of each position
        assert torch.equal(o.sort().values, torch.arange(L))
        orders.add(tuple(o.tolist()))
        masks = made.masks_from_degrees(deg)
        path = masks[2] @ masks[1] @ masks[0]
        reach = (path.reshape(L, V, L, V) > 0).any(3).any(1)  # [L out, L in]
        allowed = o[None, :] < o[:, None]
        assert not (reach & ~allowed).any()
        if not connectivity:
            assert torch.equal(reach, allowed)
        with torch.no_grad():
            base = p.net.logits_for(x[:4], None, masks)
            for j in range(L):
                y = x[:4].clone()
                y[:, j] = 1 - y[:, j]
                changed = (p.net.logits_for(y, None, masks) != base).any(-1).any(0)
                assert not changed[o <= o[j]].any()
    assert len(orders) >= 3  # training really visits several orderings


@pytest.mark.parametrize("connectivity", [False, True])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_agnostic_ensemble_is_normalised(connectivity: bool, num_classes: int) -> None:
    """Exhaustively over the 3**6 grids: sum_x exp(log_prob(x)) = 1 for the K = 3 ensemble (and per label)."""
    p = make_agnostic(ensemble=3, connectivity=connectivity, num_classes=num_classes)
    assert_normalised(p, num_classes)


def test_agnostic_ensemble_is_the_mean_of_its_orderings() -> None:
    p = make_agnostic(ensemble=3)
    x = torch.randint(0, 3, (5, 6))
    with torch.no_grad():
        per = torch.stack([torch.log_softmax(p.net.logits_for(x, None, p.net.mask_set(k)), -1)
                           .gather(-1, x[..., None])[..., 0].sum(1) for k in range(3)])
        ens = p.log_prob(x.reshape(5, 2, 3))
        torch.testing.assert_close(ens, per.exp().mean(0).log(), rtol=0, atol=1e-5)
        # ordering 0 is the one forward (eval) and sampling use
        first = torch.log_softmax(p(x.reshape(5, 2, 3)), -1).gather(-1, x.reshape(5, 2, 3, 1))[..., 0]
        torch.testing.assert_close(first.reshape(5, -1).sum(1), per[0], rtol=0, atol=1e-5)
    assert torch.equal(p.net.decode_order, torch.argsort(made_order(p.config)))


def test_agnostic_sampling_follows_the_first_ordering_cached_or_not(tmp_path) -> None:
    p = make_agnostic(ensemble=2, shape=(3,), vocab=2, hidden=(16,))
    a = p.sample(4, use_cache=True, generator=torch.Generator().manual_seed(1))
    b = p.sample(4, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    grids = torch.tensor(list(itertools.product(range(2), repeat=3)))
    with torch.no_grad():
        probs = torch.log_softmax(p(grids), -1).gather(-1, grids[..., None])[..., 0].sum(1).exp()
    x = p.sample(20000, generator=torch.Generator().manual_seed(0))
    counts = torch.stack([(x == g).all(1).sum() for g in grids]).double() / len(x)
    torch.testing.assert_close(counts, probs.double(), rtol=0, atol=0.015)
    # the orderings are derived from the config: a reloaded prior scores the same
    p.save_pretrained(tmp_path)
    q = type(p).from_pretrained(tmp_path).eval()
    assert not any(k.endswith("mask") for k in q.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(q.log_prob(grids), p.log_prob(grids), rtol=0, atol=0)


def test_agnostic_config_checks() -> None:
    with pytest.raises(ValueError, match="made_ensemble"):
        build_prior(arch="made", vocab_size=3, shape=(2, 3), made_order="agnostic", made_ensemble=0)
    with pytest.raises(ValueError, match="made_ensemble"):
        build_prior(arch="made", vocab_size=3, shape=(2, 3), made_order="agnostic", made_ensemble=5, made_num_masks=2)
    with pytest.raises(ValueError, match="cannot score a prefix"):
        make_agnostic().net(torch.zeros(1, 2, dtype=torch.long))
