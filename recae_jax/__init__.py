"""recae_jax: fast pure-functional autoencoder collaborative filtering in JAX/Flax."""

__version__ = "0.1.0"
