"""Exemplar memory, its budget and the exemplar selectors (§10 of the method reference)."""

from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from official_reference import official_herding

from clapray.config import EXEMPLAR_SELECTORS, MemoryConfig
from clapray.data.memory import ExemplarMemory, MemoryCapacity, resolve_memory_capacity
from clapray.data.selectors import (
    SelectionInputs,
    entropy_of,
    get_selector,
    inputs_by_class,
    list_selectors,
    mc_softmax_variance,
    mean_logsumexp,
    predictive_probs,
    register_selector,
)
from clapray.errors import ConfigError, UserError
from clapray.exemplars import official_mc_interleave, update_memory

CIFAR_TOTAL_2000 = [200, 100, 66, 50, 40, 33, 28, 25, 22, 20]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def random_inputs(n: int, *, d: int = 8, c: int = 5, seed: int = 0, shuffled: bool = True) -> SelectionInputs:
    """``n`` candidates with distinct, non-contiguous dataset indices (shuffled) and both input kinds."""
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(10 * n + 10, size=n, replace=False))
    if shuffled:
        indices = rng.permutation(indices)
    features = rng.standard_normal((n, d))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    mc_logits = rng.standard_normal((n, 3, c)) * 2
    probs = predictive_probs(mc_logits.transpose(1, 0, 2))
    return SelectionInputs(indices=indices, features=features, probs=probs, mc_logits=mc_logits)


class FakeScenario:
    """10 tasks x 10 classes over a shuffled training split with uneven class sizes.

    Class ``c`` has ``30 + 7 * (c % 5)`` images except class 3, which has 12 (fewer than most budgets),
    so "min(k, n_candidates)" is exercised. Features are a fixed random matrix ``[N, d]``.
    """

    def __init__(self, seed: int = 0, d: int = 6):
        rng = np.random.default_rng(seed)
        counts = [12 if c == 3 else 30 + 7 * (c % 5) for c in range(100)]
        self.targets = rng.permutation(np.repeat(np.arange(100), counts))
        self.features = rng.standard_normal((self.targets.shape[0], d))
        self.features /= np.linalg.norm(self.features, axis=1, keepdims=True)

    def classes_of_task(self, t: int) -> range:
        return range(10 * t, 10 * t + 10)

    def candidates(self, t: int) -> dict[int, np.ndarray]:
        return {c: np.flatnonzero(self.targets == c) for c in self.classes_of_task(t)}


def run_tasks(scenario: FakeScenario, budget: MemoryCapacity, selector: str, seed: int = 0,
              record: list | None = None) -> ExemplarMemory:
    memory = ExemplarMemory()

    def provide(c, indices, needs):
        assert needs == {"features"}
        return {"features": scenario.features[indices]}

    for t in range(10):
        k = budget.per_class(10 * (t + 1))
        before = {c: memory.indices_of(c).copy() for c in memory.classes}
        memory.update(scenario.candidates(t), k, selector, np.random.default_rng([seed, t]), provide=provide)
        if record is not None:
            record.append((t, k, before, ExemplarMemory.from_state_dict(memory.state_dict())))
    return memory


# --------------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------------


def test_total_budget_over_cifar_10x10():
    budget = MemoryCapacity("total", 2000)
    per_class = [budget.per_class(10 * (t + 1)) for t in range(10)]
    assert per_class == CIFAR_TOTAL_2000
    assert all(budget.max_total(10 * (t + 1)) <= 2000 for t in range(10))
    assert budget.max_total(30) == 66 * 30


def test_per_class_budget_grows_the_total():
    budget = MemoryCapacity("per_class", 20)
    assert [budget.per_class(10 * (t + 1)) for t in range(10)] == [20] * 10
    assert [budget.max_total(10 * (t + 1)) for t in range(10)] == [200 * (t + 1) for t in range(10)]


def test_budget_validation():
    with pytest.raises(ValueError, match="policy"):
        MemoryCapacity("auto", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        MemoryCapacity("total", -1)
    with pytest.raises(ValueError, match="n_seen_classes"):
        MemoryCapacity("total", 10).per_class(0)
    assert MemoryCapacity("total", 5).per_class(10) == 0


def test_auto_resolves_to_the_benchmark_default():
    auto = MemoryConfig()
    assert resolve_memory_capacity(auto, ("total", 2000)) == MemoryCapacity("total", 2000)
    assert resolve_memory_capacity(auto, ("per_class", 20)) == MemoryCapacity("per_class", 20)
    # A size given with auto keeps the benchmark's policy.
    assert resolve_memory_capacity(MemoryConfig(size=500), ("total", 2000)) == MemoryCapacity("total", 500)
    assert resolve_memory_capacity(MemoryConfig(size=5), ("per_class", 20)) == MemoryCapacity("per_class", 5)
    # An explicit policy overrides the benchmark.
    explicit = MemoryConfig(policy="per_class", size=7)
    assert resolve_memory_capacity(explicit, ("total", 2000)) == MemoryCapacity("per_class", 7)
    explicit = MemoryConfig(policy="total", size=300)
    assert resolve_memory_capacity(explicit, ("per_class", 20)) == MemoryCapacity("total", 300)


def test_explicit_policy_without_size_is_an_error():
    with pytest.raises(ConfigError, match="memory|size"):
        MemoryConfig(policy="total")
    # resolve_memory_capacity checks on its own too (it accepts any object with policy/size).
    with pytest.raises(UserError, match="memory.size.*total"):
        resolve_memory_capacity(SimpleNamespace(policy="total", size=None), ("per_class", 20))
    with pytest.raises(UserError, match="memory.policy"):
        resolve_memory_capacity(SimpleNamespace(policy="sometimes", size=3), ("per_class", 20))


def test_replay_free_budget_is_disabled():
    budget = resolve_memory_capacity(MemoryConfig(), ("total", 2000), replay_free=True)
    assert not budget.enabled and budget.per_class(10) == 0
    assert resolve_memory_capacity(MemoryConfig(), ("total", 2000)).enabled
    memory = ExemplarMemory()
    memory.update({0: np.arange(5), 1: np.arange(5, 9)}, budget.per_class(2), "random", np.random.default_rng(0))
    assert len(memory) == 0 and memory.indices().shape == (0,) and memory.labels().shape == (0,)
    assert len(ExemplarMemory()) == 0


# --------------------------------------------------------------------------------------------------
# Memory over a scenario
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy,size", [("total", 2000), ("per_class", 20)])
@pytest.mark.parametrize("selector", ["first_k", "random", "herding"])
def test_memory_follows_the_budget_over_tasks(policy, size, selector):
    scenario = FakeScenario()
    budget = MemoryCapacity(policy, size)
    record: list = []
    memory = run_tasks(scenario, budget, selector, record=record)
    for t, k, before, snapshot in record:
        assert snapshot.classes == tuple(range(10 * (t + 1)))
        n_cand = {c: int((scenario.targets == c).sum()) for c in snapshot.classes}
        assert snapshot.class_counts() == {c: min(k, n_cand[c]) for c in snapshot.classes}
        assert len(snapshot) <= budget.max_total(10 * (t + 1))
        for c in snapshot.classes:
            stored = snapshot.indices_of(c)
            assert np.unique(stored).size == stored.size
            assert (scenario.targets[stored] == c).all()  # from the class's own candidates
            if c in before:  # old classes keep the prefix of their previous selection
                np.testing.assert_array_equal(stored, before[c][:k])
        idx, lab = snapshot.indices(), snapshot.labels()
        assert np.unique(idx).size == idx.size == len(snapshot)
        np.testing.assert_array_equal(scenario.targets[idx], lab)
        np.testing.assert_array_equal(lab, np.sort(lab))  # class order
    if policy == "total":
        assert memory.class_counts()[0] == 20 and memory.class_counts()[3] == 12


def test_first_k_memory_matches_the_official_rule():
    scenario = FakeScenario()
    memory = run_tasks(scenario, MemoryCapacity("total", 2000), "first_k")
    for c in memory.classes:
        np.testing.assert_array_equal(memory.indices_of(c), np.flatnonzero(scenario.targets == c)[:20])


def test_update_with_precomputed_inputs_equals_provide():
    scenario = FakeScenario()
    cand = scenario.candidates(0)
    all_idx = np.concatenate(list(cand.values()))
    rng = np.random.default_rng(1)
    order = rng.permutation(all_idx.size)  # one batched pass in any order
    pre = inputs_by_class(all_idx[order], scenario.targets[all_idx[order]],
                          features=scenario.features[all_idx[order]])
    assert sorted(pre) == list(range(10))
    a, b = ExemplarMemory(), ExemplarMemory()
    a.update(pre, 15, "herding")
    calls = []

    def provide(c, indices, needs):
        calls.append((c, needs))
        return SelectionInputs(indices, features=scenario.features[indices])

    b.update(cand, 15, "herding", provide=provide)
    assert calls == [(c, frozenset({"features"})) for c in range(10)]
    assert a == b


def test_provide_is_only_called_when_needed():
    def provide(c, indices, needs):
        raise AssertionError("not needed")

    memory = ExemplarMemory()
    memory.update({0: np.arange(10)}, 3, "first_k", provide=provide)
    memory.update({1: np.arange(10, 20)}, 0, "herding", provide=provide)  # k == 0 needs nothing
    assert memory.class_counts() == {0: 0, 1: 0}


def test_update_errors_leave_the_memory_unchanged():
    memory = ExemplarMemory()
    memory.update({0: np.arange(10)}, 5, "first_k")
    state = memory.state_dict()
    with pytest.raises(ValueError, match="already"):
        memory.update({0: np.arange(10)}, 3, "first_k")
    with pytest.raises(ValueError, match="features"):
        memory.update({1: np.arange(10, 20)}, 3, "herding")
    with pytest.raises(ValueError, match="k must be"):
        memory.update({1: np.arange(10, 20)}, -1, "first_k")
    with pytest.raises(ValueError, match="rng"):
        memory.update({1: np.arange(10, 20)}, 3, "random")
    with pytest.raises(ValueError, match="duplicates"):
        memory.update({1: np.array([10, 11, 10])}, 3, "first_k")
    with pytest.raises(UserError, match="unknown exemplar selector"):
        memory.update({1: np.arange(10, 20)}, 3, "herd")
    assert memory.state_dict() == state


def test_random_choice_of_a_class_ignores_other_classes():
    """Each class draws from its own child generator: how many candidates class 0 has (and so how much
    randomness its draw consumes) leaves class 1's choice unchanged."""
    chosen = []
    for n0 in (3, 10, 20000):
        memory = ExemplarMemory()
        memory.update({0: np.arange(200, 200 + n0), 1: np.arange(100, 150)}, 5, "random",
                      np.random.default_rng(3))
        chosen.append(memory.indices_of(1).tolist())
    assert chosen[0] == chosen[1] == chosen[2]


def test_state_dict_round_trip():
    scenario = FakeScenario()
    memory = run_tasks(scenario, MemoryCapacity("total", 2000), "random", seed=4)
    state = memory.state_dict()
    assert isinstance(state["classes"][0], int) and isinstance(state["indices"][0][0], int)
    restored = ExemplarMemory.from_state_dict(json.loads(json.dumps(state)))
    assert restored == memory and restored.state_dict() == state
    for c in memory.classes:  # selection order, not only the set
        np.testing.assert_array_equal(restored.indices_of(c), memory.indices_of(c))
        assert restored.indices_of(c).dtype == np.int64
    assert pickle.loads(pickle.dumps(memory)) == memory
    other = ExemplarMemory.from_state_dict(state)
    other.shrink(19)
    assert other != memory
    empty = ExemplarMemory.from_state_dict(ExemplarMemory().state_dict())
    assert empty == ExemplarMemory() and len(empty) == 0
    with pytest.raises(ValueError):
        ExemplarMemory().load_state_dict({"classes": [1]})
    with pytest.raises(ValueError, match="distinct"):
        ExemplarMemory().load_state_dict({"version": 1, "classes": [1], "indices": [[4, 4]]})


def test_stored_arrays_are_read_only_copies():
    candidates = np.arange(10)
    memory = ExemplarMemory()
    memory.update({0: candidates}, 4, "first_k")
    candidates[:] = 99
    np.testing.assert_array_equal(memory.indices_of(0), [0, 1, 2, 3])
    with pytest.raises(ValueError):
        memory.indices_of(0)[0] = 5


# --------------------------------------------------------------------------------------------------
# Selectors: the contract, for every registered entry
# --------------------------------------------------------------------------------------------------


def test_config_choices_are_registered():
    assert set(EXEMPLAR_SELECTORS) <= set(list_selectors())


@pytest.mark.parametrize("name", list_selectors())
def test_selector_contract(name):
    selector = get_selector(name)
    assert selector.needs <= {"features", "probs", "mc_logits"}
    inputs = random_inputs(40)
    for k in (1, 7, 39, 40, 100):
        pos = selector(k, inputs, np.random.default_rng(5))
        assert pos.dtype == np.int64 and pos.shape == (min(k, 40),)
        assert np.unique(pos).size == pos.size and pos.min() >= 0 and pos.max() < 40
        np.testing.assert_array_equal(pos, selector(k, inputs, np.random.default_rng(5)))  # deterministic
    assert selector(0, inputs, np.random.default_rng(5)).shape == (0,)
    assert selector(3, random_inputs(0), np.random.default_rng(5)).shape == (0,)
    # Selection order: the first k of a larger selection may differ, but k >= n covers everything.
    assert sorted(selector(40, inputs, np.random.default_rng(5)).tolist()) == list(range(40))
    with pytest.raises(ValueError, match="k must be"):
        selector(-1, inputs, np.random.default_rng(5))
    with pytest.raises(ValueError, match="k must be"):
        selector(2.0, inputs, np.random.default_rng(5))  # type: ignore[arg-type]
    bare = SelectionInputs(indices=inputs.indices)
    if selector.needs:
        with pytest.raises(ValueError, match="needs"):
            selector(3, bare, np.random.default_rng(5))
    else:
        assert selector(3, bare, np.random.default_rng(5)).shape == (3,)


def test_registry():
    assert set(list_selectors()) == {"first_k", "random", "herding", "entropy", "energy", "variance"}
    with pytest.raises(UserError, match=r"unknown exemplar selector 'herdng' \(did you mean herding\?\); known: "):
        get_selector("herdng")
    with pytest.raises(ValueError, match="registered twice"):
        register_selector("first_k")(lambda k, inputs, rng: np.arange(k))
    with pytest.raises(ValueError, match="subset"):
        register_selector("needs_logits", needs=("logits",))
    assert get_selector(get_selector("random")) is get_selector("random")


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="features must have shape"):
        SelectionInputs(np.arange(4), features=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="features must have shape"):
        SelectionInputs(np.arange(4), features=np.zeros(4))
    with pytest.raises(ValueError, match="probs must have shape"):
        SelectionInputs(np.arange(4), probs=np.full((5, 2), 0.5))
    with pytest.raises(ValueError, match="probs must be probabilities"):
        SelectionInputs(np.arange(4), probs=np.random.default_rng(0).standard_normal((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        SelectionInputs(np.arange(2), features=np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="1-D"):
        SelectionInputs(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        SelectionInputs(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"mc_logits must have shape \[n=2, M>=1, C>=1\]"):
        SelectionInputs(np.arange(2), mc_logits=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mc_logits contains NaN"):
        SelectionInputs(np.arange(1), mc_logits=np.full((1, 2, 2), np.inf))


def test_torch_inputs_are_accepted():
    torch = pytest.importorskip("torch")
    feats = torch.nn.functional.normalize(torch.randn(12, 4), dim=1).to(torch.bfloat16)
    inputs = SelectionInputs(torch.arange(12), features=feats, probs=torch.softmax(torch.randn(12, 3), 1))
    assert inputs.indices.dtype == np.int64 and inputs.features.dtype == np.float32
    assert get_selector("herding")(5, inputs).shape == (5,)


# --------------------------------------------------------------------------------------------------
# Selectors: each rule
# --------------------------------------------------------------------------------------------------


def test_first_k_is_the_dataset_order_prefix():
    inputs = random_inputs(30)  # shuffled candidates: dataset order is not the given order
    pos = get_selector("first_k")(10, inputs)
    np.testing.assert_array_equal(inputs.indices[pos], np.sort(inputs.indices)[:10])
    sorted_inputs = SelectionInputs(np.arange(100, 130))
    np.testing.assert_array_equal(get_selector("first_k")(10, sorted_inputs), np.arange(10))


def test_random_is_seeded_and_not_first_k():
    select = get_selector("random")
    inputs = SelectionInputs(np.arange(200))
    a = select(20, inputs, np.random.default_rng(0))
    b = select(20, inputs, np.random.default_rng(1))
    assert not np.array_equal(a, b) and set(a.tolist()) != set(b.tolist())
    assert set(a.tolist()) != set(range(20))
    np.testing.assert_array_equal(a, select(20, inputs, np.random.default_rng(0)))
    # Depends on the candidate set and the generator only, not on the order candidates are listed in.
    shuffled = SelectionInputs(np.random.default_rng(9).permutation(200))
    np.testing.assert_array_equal(shuffled.indices[select(20, shuffled, np.random.default_rng(0))], a)


def reference_herding(features: np.ndarray, k: int) -> list[int]:
    """iCaRL herding written as directly as possible: try every unused candidate at every step."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = x.mean(axis=0)
    chosen: list[int] = []
    for _ in range(min(k, len(x))):
        best, best_dist = -1, np.inf
        for i in range(len(x)):
            if i in chosen:
                continue
            mean = (x[chosen].sum(axis=0) + x[i]) / (len(chosen) + 1)
            dist = float(np.linalg.norm(mu - mean))
            if dist < best_dist:
                best, best_dist = i, dist
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    # Unnormalised, with a shared direction (as real embeddings of one class have): herding normalises.
    features = rng.standard_normal(16) + rng.standard_normal((60, 16)) * rng.uniform(0.5, 3.0, size=(60, 1))
    inputs = SelectionInputs(np.arange(60), features=features)
    got = get_selector("herding")(25, inputs)
    assert got.tolist() == reference_herding(features, 25)
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert got[0] == int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))  # closest to the mean
    full = get_selector("herding")(100, inputs)
    assert full.tolist()[:25] == got.tolist() and sorted(full.tolist()) == list(range(60))


def test_entropy_picks_the_most_uncertain():
    probs = np.array([
        [1.0, 0.0, 0.0],  # 0: entropy 0
        [1 / 3, 1 / 3, 1 / 3],  # 1: maximal
        [0.5, 0.5, 0.0],  # 2: log 2
        [0.9, 0.05, 0.05],  # 3: low
        [0.0, 0.5, 0.5],  # 4: log 2, same as 2
        [0.34, 0.33, 0.33],  # 5: just below 1
    ])
    np.testing.assert_allclose(entropy_of(probs)[[0, 1, 2]], [0.0, np.log(3), np.log(2)])
    select = get_selector("entropy")
    inputs = SelectionInputs(np.array([50, 10, 40, 30, 20, 60]), probs=probs)
    # Ties (positions 2 and 4, both log 2) keep dataset order: index 20 (position 4) before 40.
    assert select(4, inputs).tolist() == [1, 5, 4, 2]
    assert select(6, inputs).tolist() == [1, 5, 4, 2, 3, 0]


def test_predictive_probs():
    logits = np.random.default_rng(0).standard_normal((4, 7, 3)) * 5
    mean_logits = predictive_probs(logits)
    z = logits.mean(axis=0)
    np.testing.assert_allclose(mean_logits, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True))
    mean_probs = predictive_probs(logits, reduce="mean_probs")
    e = np.exp(logits)
    np.testing.assert_allclose(mean_probs, (e / e.sum(axis=2, keepdims=True)).mean(axis=0))
    np.testing.assert_allclose(predictive_probs(logits[0]), predictive_probs(logits[:1]))
    assert not np.allclose(mean_logits, mean_probs)
    with pytest.raises(ValueError, match="shape"):
        predictive_probs(np.zeros(3))


# Three candidates, M = 2 samples, C = 2 classes, chosen so every score can be worked out by hand:
#   a: samples (0, 0), (0, 0)    logsumexp log 2, log 2               -> mean 0.693; softmax (.5, .5) twice -> var 0
#   b: samples (2, 0), (0, 0)    log(e^2 + 1) = 2.127, log 2          -> mean 1.410; p_0 = .881 then .5
#   c: samples (-1, 0), (0, -1)  log(e^-1 + 1) = 0.313 twice          -> mean 0.313; p_0 = .269 then .731
HAND_MC = np.array([[[0.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, -1.0]]])


def test_energy_picks_the_lowest_mean_logsumexp_first():
    expected_scores = [math.log(2), (math.log(math.e ** 2 + 1) + math.log(2)) / 2, math.log(math.exp(-1) + 1)]
    np.testing.assert_allclose(mean_logsumexp(HAND_MC), expected_scores)
    inputs = SelectionInputs(np.array([7, 8, 9]), mc_logits=HAND_MC)
    assert get_selector("energy")(3, inputs).tolist() == [2, 0, 1]  # c, a, b: highest energy first


def test_variance_picks_the_steadiest_predictions_first():
    p_b = math.e ** 2 / (math.e ** 2 + 1)
    p_c = 1 / (1 + math.e)
    # Unbiased variance of two values x, y is (x - y)^2 / 2; both classes' probabilities vary alike.
    expected = [0.0, 2 * (p_b - 0.5) ** 2 / 2, 2 * (p_c - (1 - p_c)) ** 2 / 2]
    np.testing.assert_allclose(mc_softmax_variance(HAND_MC), expected)
    inputs = SelectionInputs(np.array([7, 8, 9]), mc_logits=HAND_MC)
    assert get_selector("variance")(3, inputs).tolist() == [0, 1, 2]  # a, b, c
    assert mc_softmax_variance(HAND_MC[:, :1]).tolist() == [0.0, 0.0, 0.0]  # one sample: no spread


def test_official_mc_interleave_rebuilds_the_official_arrangement():
    """Samples m of image n hold 10 m + n; batches of 2. The official code stacks each batch's [M, B, C]
    sample by sample and reads the result as [N, M, C]: image 0 gets (0, 1), image 1 (10, 11), image 2 (2, 12)."""
    mc = (10 * np.arange(2)[:, None] + np.arange(3)[None, :])[..., None].astype(float)  # [M=2, N=3, C=1]
    assert official_mc_interleave(mc, 2)[..., 0].tolist() == [[0, 1], [10, 11], [2, 12]]
    assert mc.transpose(1, 0, 2)[..., 0].tolist() == [[0, 10], [1, 11], [2, 12]]  # the intended arrangement
    np.testing.assert_array_equal(official_mc_interleave(mc, 3), mc.reshape(3, 2, 1))  # one batch


# --------------------------------------------------------------------------------------------------
# The selection protocols (clapray.exemplars)
# --------------------------------------------------------------------------------------------------

# Class 0 (stored from an earlier task: 10, 11, 12) and class 1 (the new task: 20, 21, 22); k = 2.
# MC-mean logits over the two seen classes, one row per candidate in the official order (memory, then new):
HAND_LOGITS = np.array([[1.0, 0.0], [0.0, 1.5], [0.6, 0.8],   # 10, 11, 12
                        [3.0, 4.0], [2.0, 0.0], [0.0, 2.5]])  # 20, 21, 22
# Herding, class 0: normalised rows (1, 0), (0, 1), (.6, .8); mean (.533, .6). Distances to the mean: .760,
# .667, .211 -> 12 first; then ||mean - (x_12 + x) / 2||: .333 for 10, .380 for 11 -> [12, 10].
# Class 1 normalises to the same three directions, (.6, .8) = 20, (1, 0) = 21, (0, 1) = 22 -> [20, 21]
# (unnormalised, 22 would be closest to the mean of (3, 4), (2, 0), (0, 2.5)).
# Entropy (two classes: the smaller |l_0 - l_1|, the higher): class 0 gaps 1, 1.5, .2 -> [12, 10];
# class 1 gaps 1, 2, 2.5 -> [20, 21].
HAND_TARGETS = np.zeros(30, dtype=np.int64)
HAND_TARGETS[20:23] = 1


def hand_memory() -> ExemplarMemory:
    memory = ExemplarMemory()
    memory.update({0: np.array([10, 11, 12])}, 3, "first_k")
    return memory


def fake_predict(calls: list):
    rows = {i: r for i, r in zip([10, 11, 12, 20, 21, 22], HAND_LOGITS, strict=True)}
    embeddings = {i: np.array([i % 3, 1.0]) for i in rows}

    def predict(indices, flips, samples):
        calls.append((indices.tolist(), flips))
        logits = np.stack([rows[int(i)] for i in indices])
        return (logits[None].repeat(2, axis=0) if samples else logits), np.stack([embeddings[int(i)] for i in indices])

    return predict


@pytest.mark.parametrize("selector", ["herding", "entropy"])
def test_official_selection_picks_the_hand_checked_exemplars(selector):
    memory, calls = hand_memory(), []
    update_memory(memory, task=1, k=2, new_indices=np.array([20, 21, 22]), targets=HAND_TARGETS,
                  options=MemoryConfig(selector=selector), seed=0, batch_size=4, predict=fake_predict(calls))
    assert calls == [([10, 11, 12, 20, 21, 22], None)]  # one pass: the old memory, then the new data
    assert memory.indices_of(0).tolist() == [12, 10]  # re-selected, not the prefix [10, 11]
    assert memory.indices_of(1).tolist() == [20, 21]


def test_clapray_selection_keeps_old_prefixes_and_herds_new_classes_on_embeddings():
    memory, calls = hand_memory(), []
    update_memory(memory, task=1, k=2, new_indices=np.array([20, 21, 22]), targets=HAND_TARGETS,
                  options=MemoryConfig(selector="herding", selection="clapray"), seed=0, batch_size=4,
                  predict=fake_predict(calls))
    assert calls == [([20, 21, 22], None)]  # the new task's images only
    assert memory.indices_of(0).tolist() == [10, 11]
    # Embeddings (i % 3, 1): 20 -> (2, 1), 21 -> (0, 1), 22 -> (1, 1); normalised, 22 is nearest their mean.
    assert memory.indices_of(1).tolist()[0] == 22


def test_train_views_draw_seeded_flips_and_model_free_selectors_never_predict():
    calls = []
    options = MemoryConfig(selector="entropy", selection_views="train")
    update_memory(hand_memory(), task=1, k=2, new_indices=np.array([20, 21, 22]), targets=HAND_TARGETS,
                  options=options, seed=0, batch_size=4, predict=fake_predict(calls))
    update_memory(hand_memory(), task=1, k=2, new_indices=np.array([20, 21, 22]), targets=HAND_TARGETS,
                  options=options, seed=0, batch_size=4, predict=fake_predict(calls))
    flips = calls[0][1]
    assert flips.dtype == bool and flips.shape == (6,) and np.array_equal(flips, calls[1][1])
    for selector in ("first_k", "random"):
        memory = hand_memory()
        update_memory(memory, task=1, k=2, new_indices=np.array([20, 21, 22]), targets=HAND_TARGETS,
                      options=MemoryConfig(selector=selector), seed=0, batch_size=4,
                      predict=lambda *args: pytest.fail("a model-free selector ran the model"))
        assert memory.indices_of(0).tolist() == [10, 11]  # official 'random' = first-k: prefix, not re-selected


@pytest.mark.parametrize("seed", [0, 1])
def test_official_herding_equals_the_official_loop_on_random_logits(seed):
    rng = np.random.default_rng(seed)
    memory = ExemplarMemory()
    memory.update({c: np.arange(10 * c, 10 * c + 6) for c in range(3)}, 6, "first_k")  # 3 old classes
    new = np.arange(100, 130)
    targets = np.zeros(130, dtype=np.int64)
    targets[:30] = np.arange(30) // 10
    targets[100:] = 3 + np.arange(30) % 2  # 2 new classes, interleaved in dataset order
    candidates = np.concatenate([memory.indices(), new])
    logits = rng.standard_normal((len(candidates), 5)) * 3

    def predict(indices, flips, samples):
        assert indices.tolist() == candidates.tolist()
        return logits, None

    update_memory(memory, task=1, k=4, new_indices=new, targets=targets, options=MemoryConfig(selector="herding"),
                  seed=0, batch_size=8, predict=predict)
    expected = official_herding(logits, targets[candidates], 4)
    for c, positions in expected.items():
        assert memory.indices_of(c).tolist() == candidates[positions].tolist()


def test_reselect_needs_every_stored_class_and_only_its_exemplars():
    memory = hand_memory()
    state = memory.state_dict()
    with pytest.raises(ValueError, match="every stored class"):
        memory.update({1: np.array([20, 21])}, 1, "first_k", reselect={})
    with pytest.raises(ValueError, match="must be its stored exemplars"):
        memory.update({1: np.array([20, 21])}, 1, "first_k", reselect={0: np.array([10, 11, 13])})
    assert memory.state_dict() == state
    memory.update({1: np.array([20, 21])}, 2, "first_k", reselect={0: np.array([12, 11, 10])})
    assert memory.indices_of(0).tolist() == [10, 11]  # first_k re-selects in dataset order
