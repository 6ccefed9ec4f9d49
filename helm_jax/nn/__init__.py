"""Equivariant building blocks: SO(3) linear maps and norms, SO(2) convolutions, layers."""
