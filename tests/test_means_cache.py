"""``protocols.latent.encode_means``: each distinct passage encoded once, a cache that follows the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.latent import MeansCache, encode_means, encoded_passages


@pytest.fixture()
def autoencoder():
    from calm.autoencoder import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    MeansCache.clear_all()
    return Autoencoder(AutoencoderConfig(K=4, latent_dim=8, hidden_size=32, intermediate_size=64, num_layers=2,
                                         vocab_size=64)).eval()


def reference(autoencoder, ids: np.ndarray) -> np.ndarray:
    """Every row alone through the encoder."""
    with torch.inference_mode():
        return np.concatenate([autoencoder.encode(torch.as_tensor(r[None]))[0].numpy() for r in ids]).astype(float)


def test_means_match_the_encoder_row_by_row_in_any_batching(autoencoder):
    ids = np.random.default_rng(0).integers(0, 64, size=(300, 16))
    want = reference(autoencoder, ids)
    for batch_size in (1, 7, 1024):
        np.testing.assert_allclose(encode_means(autoencoder, ids, batch_size=batch_size), want, atol=1e-6)


def test_duplicates_are_encoded_once_and_returned_in_place(autoencoder):
    rng = np.random.default_rng(1)
    distinct = rng.integers(0, 64, size=(20, 8))
    ids = distinct[rng.integers(0, 20, size=200)]  # 200 rows, at most 20 distinct
    before = encoded_passages()
    mu = encode_means(autoencoder, ids, batch_size=64)
    assert encoded_passages() - before == len(np.unique(ids, axis=0))
    np.testing.assert_allclose(mu, reference(autoencoder, ids), atol=1e-6)
    assert mu.dtype == np.float64 and mu.shape == (200, 2, 8)


def test_cache_skips_passages_seen_before_and_only_those(autoencoder):
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 64, size=(30, 8)), rng.integers(0, 64, size=(10, 8))
    first = encode_means(autoencoder, a, batch_size=64, cache=True)
    before = encoded_passages()
    again = encode_means(autoencoder, np.concatenate([b, a[::-1]]), batch_size=64, cache=True)
    assert encoded_passages() - before == len(np.unique(b, axis=0))  # a came from the cache
    np.testing.assert_array_equal(again[10:], first[::-1])
    # without cache=True the cache is neither read nor written
    before = encoded_passages()
    encode_means(autoencoder, a, batch_size=64)
    assert encoded_passages() - before == 30


def test_cache_is_emptied_when_the_weights_change(autoencoder):
    ids = np.random.default_rng(3).integers(0, 64, size=(16, 8))
    old = encode_means(autoencoder, ids, batch_size=64, cache=True)
    with torch.no_grad():
        autoencoder.to_latent.weight.mul_(2.0)  # an optimiser step changes weights in place too
    new = encode_means(autoencoder, ids, batch_size=64, cache=True)
    np.testing.assert_allclose(new, reference(autoencoder, ids), atol=1e-6)
    assert not np.allclose(new, old)


def test_cache_is_per_autoencoder(autoencoder):
    from calm.autoencoder import Autoencoder

    other = Autoencoder(autoencoder.config).eval()  # same config, other weights
    ids = np.random.default_rng(4).integers(0, 64, size=(8, 8))
    encode_means(autoencoder, ids, batch_size=64, cache=True)
    np.testing.assert_allclose(encode_means(other, ids, batch_size=64, cache=True), reference(other, ids), atol=1e-6)


def test_empty_input(autoencoder):
    assert encode_means(autoencoder, np.zeros((0, 8), dtype=np.int64), batch_size=4, cache=True).shape == (0, 2, 8)
