"""The ingress's mask cache and ETags (serve_app/mask_cache.py); tests/integration/test_service.py checks over HTTP
that a hit does no model call."""

import numpy as np

from serve_app.mask_cache import MaskCache, MaskKey, content_hash, etag, matches
from serve_app.schemas import MaskResult, RemoveParams


def result(side: int) -> MaskResult:
    return MaskResult(mask=np.zeros((side, side), np.float32), batch_size=1, model_seconds=0.1)


def key(name: str, tier: str = "fast") -> MaskKey:
    return MaskKey(content_hash(name.encode()), tier, "eager", "ckpt_fast.pth")


def test_least_recently_used_masks_go_first_within_the_byte_bound() -> None:
    cache = MaskCache(max_bytes=3 * 100 * 100 * 4)  # three 100x100 float32 masks
    for name in "abc":
        cache.put(key(name), result(100))
    assert cache.get(key("a")) is not None  # a is now the most recent
    cache.put(key("d"), result(100))
    assert cache.get(key("b")) is None and cache.get(key("a")) is not None and cache.get(key("d")) is not None
    assert len(cache) == 3 and cache.used_bytes == 3 * 40_000
    cache.put(key("big"), result(1000))  # larger than the whole cache: not kept, nothing evicted for it
    assert cache.get(key("big")) is None and len(cache) == 3
    cache.put(key("a"), result(50))  # replacing an entry counts its new size
    assert cache.used_bytes == 2 * 40_000 + 10_000


def test_the_key_separates_tiers_runtimes_and_weights() -> None:
    cache = MaskCache(max_bytes=10**6)
    cache.put(key("a", tier="fast"), result(10))
    assert cache.get(key("a", tier="quality")) is None
    assert cache.get(MaskKey(content_hash(b"a"), "fast", "onnx", "ckpt_fast.pth")) is None
    assert cache.get(MaskKey(content_hash(b"a"), "fast", "eager", "other.pth")) is None
    assert cache.get(MaskKey(content_hash(b"a"), "fast", "eager", "ckpt_fast.pth", caller="another")) is None
    assert MaskCache(0).put(key("a"), result(1)) is None and len(MaskCache(0)) == 0


def test_etags_change_with_whatever_changes_the_bytes() -> None:
    base = etag(key("a"), RemoveParams(), None)
    assert base == etag(key("a"), RemoveParams(), None) and base.startswith('W/"')
    different = {
        etag(key("b"), RemoveParams(), None),
        etag(key("a", tier="quality"), RemoveParams(), None),
        etag(key("a"), RemoveParams(effect="mask"), None),
        etag(key("a"), RemoveParams(format="webp"), None),
        etag(key("a"), RemoveParams(crop=True), None),
        etag(key("a"), RemoveParams(effect="background"), b"one"),
        etag(key("a"), RemoveParams(effect="background"), b"two"),
        etag(key("a"), RemoveParams(), None, served="bgserve 0.2.0"),  # another version, another tier setting
    }
    assert base not in different and len(different) == 8
    assert etag(key("a"), RemoveParams(tier="fast"), None) == base  # the tier is in the key, not twice


def test_if_none_match_lists_and_weak_tags() -> None:
    assert matches('"x", "y"', '"y"') and matches('W/"y"', '"y"') and matches('"y"', 'W/"y"')
    assert not matches('"x"', '"y"') and not matches(None, '"y"') and not matches("", '"y"')


def test_a_wildcard_if_none_match_is_no_reason_for_a_304() -> None:
    """`*` asks whether the resource exists; it says nothing of whether the client holds this answer (a 304 for it
    gave an empty answer to any upload, an undecodable one included)."""
    assert not matches("*", '"y"') and not matches('"x", *', '"y"')
