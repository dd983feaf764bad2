"""d2cli.lru.LRU: the one least-recently-used cache."""

from d2cli.lru import LRU


def test_keeps_the_most_recent_and_makes_each_value_once_while_held():
    made = []
    cache = LRU(lambda k: made.append(k) or k * 10, size=2)
    assert cache[1] == 10 and cache[2] == 20 and cache[1] == 10  # 1 is now the most recent
    assert made == [1, 2]
    assert cache[3] == 30  # drops 2, the least recently used
    assert 1 in cache and 2 not in cache and len(cache) == 2
    assert cache[2] == 20 and made == [1, 2, 3, 2]


def test_a_failed_make_holds_nothing():
    def make(k):
        if k < 0:
            raise ValueError(k)
        return k

    cache = LRU(make, size=1)
    try:
        cache[-1]
    except ValueError:
        pass
    assert len(cache) == 0 and cache[5] == 5
