"""Augmentation and normalisation as pure JAX functions, run on the device inside the jitted step.

Randomness comes from a key the caller derives from (seed, step), so the same step always sees the
same crops and flips: a resumed run continues the exact stream of the uninterrupted one.
"""
import jax
import jax.numpy as jnp

# open_lth normalises CIFAR with the ImageNet statistics; the paper's numbers use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images_uint8: jax.Array) -> jax.Array:
    x = images_uint8.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Zero-pad `pad` pixels, take a random crop of the original size, flip half at random."""
    n, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    cropped = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1, :], cropped)
