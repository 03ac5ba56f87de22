"""Pieces of the Flax MAE that exist for speed must compute exactly what the plain version computes."""

import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax.models import vit
from abaw_jax.models.mae import permute_tokens, random_masking


def test_padded_masked_attention_equals_unpadded_attention_and_its_gradient():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 50, 4, 16)), jnp.float32) for _ in range(3))
    weights = jnp.asarray(rng.normal(size=(2, 50, 4, 16)), jnp.float32)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * weights)

    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v)
    padded = lambda q, k, v: vit.padded_attention(q, k, v, multiple=64, implementation=None)
    np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-6)
    for g_padded, g_plain in zip(jax.grad(loss, (1, 2, 3))(padded, q, k, v), jax.grad(loss, (1, 2, 3))(plain, q, k, v)):
        np.testing.assert_allclose(g_padded, g_plain, rtol=1e-5, atol=1e-6)


def test_permute_tokens_matches_take_along_axis_and_its_gradient():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 16, 8)), jnp.float32)
    ids_shuffle, _, ids_restore = random_masking(jnp.asarray(rng.uniform(size=(3, 16))), 4)
    weights_keep = jnp.asarray(rng.normal(size=(3, 4, 8)), jnp.float32)
    weights_all = jnp.asarray(rng.normal(size=(3, 16, 8)), jnp.float32)

    cases = [(ids_shuffle[:, :4], ids_restore, weights_keep), (ids_restore, ids_shuffle, weights_all)]
    for order, inverse, weights in cases:
        reference = lambda x: jnp.sum(jnp.take_along_axis(x, order[..., None], axis=1) * weights)
        ours = lambda x: jnp.sum(permute_tokens(x, order, inverse) * weights)
        np.testing.assert_array_equal(
            permute_tokens(x, order, inverse), jnp.take_along_axis(x, order[..., None], axis=1)
        )
        np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(reference)(x), rtol=1e-6)


def test_random_masking_keeps_the_lowest_noise_patches():
    noise = jnp.asarray([[0.9, 0.1, 0.5, 0.3]])
    ids_shuffle, mask, ids_restore = random_masking(noise, 2)
    np.testing.assert_array_equal(ids_shuffle, [[1, 3, 2, 0]])
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0]])
    np.testing.assert_array_equal(jnp.take_along_axis(ids_shuffle, ids_restore, axis=1), [[0, 1, 2, 3]])
