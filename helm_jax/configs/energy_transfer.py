"""Energy (and force) transfer runs: direct, pretrained-frozen, finetuned.

    python experiments/run.py --config=experiments/energy_transfer.py:direct
    python experiments/run.py --config=experiments/energy_transfer.py:frozen \
        --config.transfer.init_from=workdirs/omol_pretrain
    python experiments/run.py --config=experiments/energy_transfer.py:finetune,small \
        --config.transfer.init_from=workdirs/omol_pretrain_small

Variants: ``direct`` (random init, all trained), ``frozen`` (backbone loaded from a
Hamiltonian checkpoint and frozen: bit-identical), ``finetune`` (backbone loaded, trained at
``optim.backbone_lr_scale`` times the learning rate); add ``small`` for a quick CPU run. The
model settings must equal the pretraining checkpoint's (checked). Energies are fitted after
removing the per-element linear reference.
"""

from helm_jax.configs import omol_pretrain, parse_variant

PROTOCOLS = ("direct", "frozen", "finetune")


def apply_protocol(c, protocol: str) -> None:
    """Sets the energy losses and the transfer protocol (in place)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Choose one of {PROTOCOLS} as the variant, not {protocol!r}.")
    c.losses.update(hamiltonian=0.0, energy=1.0)
    c.transfer.protocol = protocol
    c.optim.backbone_lr_scale = 0.1 if protocol == "finetune" else 1.0


def get_config(variant: str = "direct"):
    """Energy transfer on the pretraining data's energies (the embedded dataset by default)."""
    v = parse_variant(variant, groups={"protocol": PROTOCOLS}, flags=("small",),
                      config="energy_transfer")
    protocol, flags = v.choice["protocol"], v.flags
    c = omol_pretrain.get_config("small" if "small" in flags else "")
    c.name = f"energy_{protocol}" + ("_small" if "small" in flags else "")
    apply_protocol(c, protocol)
    c.train.update(num_steps=400 if "small" not in flags else 40)
    return c
