"""The HELM model: backbone, heads, energy head and assembly of full H (see helm_jax/README.md)."""
