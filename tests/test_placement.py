"""Unit tests for the placement policy and the read probe order (stor.store.pairs).

These are rules easier to state alone than through a server: which pair a
write goes to, given each pair's free space, and in which order a read probes
the directories. Every random choice is driven by a seeded random.Random, so
the statistical assertions are deterministic, and their tolerances are still
tight enough that a wrong rule (uniform choice, always the biggest, negative
free space counted) fails them.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from stor.store.pairs import StoragePair, choose_pair, make_pairs, pair_free_bytes, probe_order

DRAWS = 100_000


def shares(free: list[int], threshold: int, seed: int = 1234, draws: int = DRAWS) -> Counter[int | None]:
    rng = random.Random(seed)
    return Counter(choose_pair(free, threshold, rng) for _ in range(draws))


def assert_share(counts: Counter[int | None], index: int, expected: float, draws: int = DRAWS) -> None:
    # 6 standard deviations of a binomial: a correct rule never fails this,
    # and a rule off by even one percentage point does.
    sigma = math.sqrt(draws * expected * (1 - expected))
    got = counts[index]
    assert abs(got - draws * expected) <= 6 * sigma, (
        f"pair {index}: chosen {got} times of {draws}, expected {draws * expected:.0f} +- {6 * sigma:.0f}"
    )


# ---- choose_pair ----------------------------------------------------------------


def test_weighted_choice_follows_free_space() -> None:
    free = [10 * 2**30, 30 * 2**30, 60 * 2**30]
    counts = shares(free, threshold=2**30)
    assert set(counts) == {0, 1, 2}
    assert_share(counts, 0, 0.1)
    assert_share(counts, 1, 0.3)
    assert_share(counts, 2, 0.6)


def test_weighted_choice_with_two_very_unequal_pairs() -> None:
    counts = shares([1_000, 99_000], threshold=0)
    assert_share(counts, 0, 0.01)
    assert_share(counts, 1, 0.99)


def test_weighted_choice_is_reproducible_with_the_same_seed() -> None:
    free = [5, 7, 11, 13]
    a = [choose_pair(free, 0, r) for r in [random.Random(7)] for _ in range(1000)]
    b = [choose_pair(free, 0, r) for r in [random.Random(7)] for _ in range(1000)]
    assert a == b


@pytest.mark.parametrize("free", [[], [0], [0, 0], [-1, -10**12], [0, -5, 0]])
def test_no_pair_with_room_gives_none(free: list[int]) -> None:
    rng = random.Random(0)
    assert all(choose_pair(free, 0, rng) is None for _ in range(100))
    assert all(choose_pair(free, 10**9, rng) is None for _ in range(100))


def test_emptiest_pair_wins_when_every_pair_is_below_the_threshold() -> None:
    rng = random.Random(0)
    threshold = 10**9
    assert {choose_pair([10, 30, 20], threshold, rng) for _ in range(1000)} == {1}
    assert {choose_pair([500, 100, 999_999_999], threshold, rng) for _ in range(1000)} == {2}
    # Negative and zero free space never win, even when they are the only "large" numbers in magnitude.
    assert {choose_pair([-10**12, 7, 0], threshold, rng) for _ in range(1000)} == {1}


def test_threshold_is_inclusive_for_the_emptiest_rule() -> None:
    # "If no pair has MORE than the threshold left, the emptiest is chosen":
    # a pair with exactly the threshold still counts as below it.
    rng = random.Random(0)
    assert {choose_pair([100, 50], 100, rng) for _ in range(1000)} == {0}
    # One byte more and the choice becomes weighted random: the small pair gets picked too.
    counts = shares([101, 50], threshold=100)
    assert_share(counts, 0, 101 / 151)
    assert_share(counts, 1, 50 / 151)


def test_zero_and_negative_free_are_never_chosen_at_random() -> None:
    free = [10**9, 0, -(10**12), 3 * 10**9, -1]
    counts = shares(free, threshold=0)
    assert set(counts) == {0, 3}, counts
    assert_share(counts, 0, 0.25)
    assert_share(counts, 3, 0.75)


def test_single_pair_with_room_is_always_chosen() -> None:
    counts = shares([-5, 0, 42, 0], threshold=0, draws=1000)
    assert counts == Counter({2: 1000})


# ---- probe_order ----------------------------------------------------------------


def some_pairs(n: int) -> list[StoragePair]:
    return [StoragePair(i, (Path(f"/mnt/data{2 * i + 1}"), Path(f"/mnt/data{2 * i + 2}")), True) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_probe_order_visits_every_directory_once_first_one_mirror_of_each_pair(n: int) -> None:
    pairs = some_pairs(n)
    pair_of = {d: p.index for p in pairs for d in p.dirs}
    rng = random.Random(99)
    for _ in range(500):
        order = probe_order(pairs, rng)
        assert len(order) == 2 * n
        assert sorted(order) == sorted(pair_of), "every directory exactly once"
        first, second = order[:n], order[n:]
        assert sorted(pair_of[d] for d in first) == list(range(n)), f"first half is one mirror per pair: {order}"
        assert sorted(pair_of[d] for d in second) == list(range(n)), f"second half is the other mirrors: {order}"
        for d in first:
            a, b = pairs[pair_of[d]].dirs
            other = b if d == a else a
            assert other in second, f"{other} (mirror of {d}) must come in the second half: {order}"


@pytest.mark.parametrize("n", [1, 3])  # one pair takes a shortcut of its own
def test_probe_order_spreads_reads_over_all_directories(n: int) -> None:
    # Pairs shuffled and a random mirror of each first: every directory is the
    # first probe equally often, and all pairs lead equally often.
    pairs = some_pairs(n)
    rng = random.Random(2024)
    draws = 60_000
    first = Counter(probe_order(pairs, rng)[0] for _ in range(draws))
    dirs = [d for p in pairs for d in p.dirs]
    assert set(first) == set(dirs)
    expected = draws / len(dirs)
    share = 1 / len(dirs)
    sigma = math.sqrt(draws * share * (1 - share))
    for d in dirs:
        assert abs(first[d] - expected) <= 6 * sigma, (d, first[d], expected)


def test_probe_order_does_not_mutate_the_pairs() -> None:
    pairs = some_pairs(4)
    before = list(pairs)
    probe_order(pairs, random.Random(1))
    assert pairs == before


# ---- make_pairs and writable_pairs_regex -----------------------------------------


def test_make_pairs_marks_pairs_writable_only_if_both_dirs_match() -> None:
    dirs = [
        (Path("/mnt/data1"), Path("/mnt/data2")),  # both match
        (Path("/mnt/data3"), Path("/mnt/data4")),  # neither matches
        (Path("/mnt/data1b"), Path("/mnt/data3")),  # only the first matches
        (Path("/mnt/data4"), Path("/mnt/data2b")),  # only the second matches
    ]
    pairs = make_pairs(dirs, re.compile(r"data[12]"))
    assert [p.index for p in pairs] == [0, 1, 2, 3]
    assert [p.dirs for p in pairs] == dirs
    assert [p.writable for p in pairs] == [True, False, False, False]


def test_make_pairs_default_regex_makes_everything_writable() -> None:
    pairs = make_pairs([(Path("/a"), Path("/b")), (Path("/c"), Path("/d"))], re.compile(".*"))
    assert all(p.writable for p in pairs)


def test_regex_is_searched_not_anchored() -> None:
    # The original used Perl's =~, which finds the pattern anywhere in the path.
    pairs = make_pairs([(Path("/srv/rw/a"), Path("/srv/rw/b")), (Path("/srv/ro/a"), Path("/srv/ro/b"))], re.compile("rw"))
    assert [p.writable for p in pairs] == [True, False]


def test_read_only_pair_has_no_free_space(tmp_path: Path) -> None:
    rw_a, rw_b, ro_a, ro_b = (tmp_path / n for n in ("rw1", "rw2", "ro1", "ro2"))
    for d in (rw_a, rw_b, ro_a, ro_b):
        d.mkdir()
    rw, ro = make_pairs([(rw_a, rw_b), (ro_a, ro_b)], re.compile("/rw"))
    assert rw.writable and not ro.writable
    assert pair_free_bytes(ro, 0) == 0
    assert pair_free_bytes(rw, 0) > 0
    # The upload's size is taken off: an upload bigger than the disk leaves the pair without room.
    assert pair_free_bytes(rw, 10**18) < 0
    # A read-only pair is never chosen, however much room its disks have.
    free = [pair_free_bytes(p, 1) for p in (rw, ro)]
    rng = random.Random(5)
    assert {choose_pair(free, 0, rng) for _ in range(1000)} == {0}
