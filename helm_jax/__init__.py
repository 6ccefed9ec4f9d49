"""helm_jax: HELM Hamiltonian learning in JAX/Flax.

See ``helm_jax/README.md`` for which file does what.
"""

__version__ = "0.1.0"
