"""nablaDFT Hamiltonian runs (omega-B97X-D/def2-SVP, Psi4 order) on the 2k/5k/10k splits.

    python experiments/run.py --config=experiments/nabladft.py:2k \
        --config.data.path=/data/nabladft/dataset_train_2k.db

Variants: ``2k``, ``5k``, ``10k`` (training-set size), ``small`` for a quick CPU run.
"""

from helm_jax.configs import base, parse_variant

SIZES = {"2k": 2000, "5k": 5000, "10k": 10000}


def get_config(variant: str = "2k"):
    """Paper nablaDFT settings: C=128, 3 layers, l_max=4, 128 Gaussians on 0-20 A, cutoff
    20 A, float64, lr 1e-4 with plateau, one molecule per batch."""
    v = parse_variant(variant, groups={"size": tuple(SIZES)}, flags=("small",),
                      config="nabladft")
    size, flags = v.choice["size"], v.flags
    c = base.get_config()
    c.name = f"nabladft_{size}"
    c.model.update(channels=128, num_layers=3, l_max=4, m_max=4, num_rbf=128, cutoff=20.0,
                   dtype="float64", param_dtype="float64")
    c.optim.update(name="adamw", learning_rate=1e-4, schedule="plateau")
    c.data.path = f"data/nabladft/dataset_train_{size}.db"
    c.data.kind = "nabladft"
    c.data.batch.molecules_per_batch = 1
    c.data.split.update(train=int(SIZES[size] * 0.9), val=SIZES[size] // 10, test=None)
    c.train.update(num_steps=50000, eval_every=1000, checkpoint_every=1000, log_every=100)
    if "small" in flags:
        base.small_variant(c, l_max=4, steps=10)
    return c
