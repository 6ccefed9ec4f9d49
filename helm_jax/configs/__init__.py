"""Experiment configurations as an importable package.

Each module's ``get_config(variant)`` returns an ``ml_collections.ConfigDict``; ``base`` holds
every field with its default and meaning, the others override a few. The command-line
handles are the files in ``experiments/`` (``--config=experiments/md17.py:ethanol,curve``),
which re-export these functions, so a fork can also ``from helm_jax.configs import md17``.

Variants (the text after ``config.py:``) are parsed strictly by :func:`parse_variant`: an
unknown word or key is an error that lists the valid ones. :func:`complete` turns a config
saved in a checkpoint back into a full one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Variant:
    """A parsed variant: the word chosen in each group, the flags set, the key=value pairs,
    and which groups and keys the text named (the rest are at their defaults)."""

    choice: dict[str, str]
    flags: frozenset[str]
    values: dict[str, Any]
    named: frozenset[str]

    def __contains__(self, flag: str) -> bool:
        return flag in self.flags


def parse_variant(text: str | None, *, groups: Mapping[str, tuple[str, ...]] | None = None,
                  flags: tuple[str, ...] = (), keys: Mapping[str, tuple[type, Any]] | None = None,
                  config: str = "config") -> Variant:
    """Parses ``"word,word,key=value"`` against the words a config accepts.

    Args:
      text: the variant (``None`` or ``""``: every group at its default).
      groups: ``{group: (default, other, ...)}``: at most one word of each group; the first
        is the default.
      flags: independent on/off words.
      keys: ``{key: (type, default)}`` for ``key=value`` tokens.
      config: the config's name, for error messages.

    Raises:
      ValueError: for an unknown word or key, two words of one group, or a value that does
        not convert; the message lists what is valid.
    """
    groups, keys = dict(groups or {}), dict(keys or {})
    owner = {w: g for g, words in groups.items() for w in words}
    choice: dict[str, str] = {}
    seen: set[str] = set()
    values = {k: d for k, (_, d) in keys.items()}
    valid = (sorted(owner) + sorted(flags) + [f"{k}=<{t.__name__}>" for k, (t, _) in
                                              sorted(keys.items())])
    for tok in filter(None, (t.strip() for t in (text or "").split(","))):
        if "=" in tok:
            k, v = tok.split("=", 1)
            if k not in keys:
                raise ValueError(f"{config}: unknown variant key {k!r} in {text!r}; valid: "
                                 f"{', '.join(valid) or 'none'}.")
            seen.add(k)
            try:
                values[k] = keys[k][0](v)
            except ValueError as err:
                raise ValueError(f"{config}: {k}={v!r} is not a {keys[k][0].__name__}") from err
        elif tok in owner:
            g = owner[tok]
            if g in choice and choice[g] != tok:
                raise ValueError(f"{config}: {choice[g]!r} and {tok!r} in {text!r} are both "
                                 f"{g} choices ({', '.join(groups[g])}); give one.")
            choice[g] = tok
            seen.add(g)
        elif tok in flags:
            seen.add(tok)
        else:
            raise ValueError(f"{config}: unknown variant word {tok!r} in {text!r}; valid: "
                             f"{', '.join(valid) or 'none'}.")
    for g, words in groups.items():
        choice.setdefault(g, words[0])
    return Variant(choice=choice, flags=frozenset(seen & set(flags)), values=values,
                   named=frozenset(seen - set(flags)))


# Fields added after checkpoints were first written, with the value that reproduces what
# those checkpoints were trained with (the current default may differ).
LEGACY = {"heads.label_scale": "none", "data.node_reference": "standardize",
          "data.split_order": "random", "model.charge_spin_embedding": False,
          "heads.spin": "none", "model.init_scale": 1.0, "model.edge_embedding_std": 1.0,
          "model.rbf_width": 1.0, "optim.beta1": 0.9, "optim.beta2": 0.999}

# config.model fields that only shape the initial parameters: a resumed run or a loaded
# backbone does not depend on them.
INIT_ONLY_MODEL_FIELDS = ("init_scale", "edge_embedding_std")


def complete(saved: Mapping[str, Any]):
    """The base config overlaid with ``saved`` (a checkpoint's config as JSON): fields the
    saved config lacks take their :data:`LEGACY` value, else the base default, so the code
    below the training loop reads every field directly."""
    import ml_collections  # pylint: disable=import-outside-toplevel

    from helm_jax.configs import base  # pylint: disable=import-outside-toplevel

    config = base.get_config()
    flat = flatten(saved)
    for key, value in LEGACY.items():
        flat.setdefault(key, value)
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            if p not in node:
                node[p] = ml_collections.ConfigDict()
            node = node[p]
        if leaf in node and isinstance(node[leaf], tuple) and isinstance(value, list):
            value = tuple(value)
        _assign(node, leaf, value)
    return config


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of a nested mapping (a config's JSON form)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _assign(node, leaf: str, value) -> None:
    """``node[leaf] = value``, also where the default is None (a typed placeholder) or the
    saved value's type differs from the default's (int for float)."""
    try:
        node[leaf] = value
    except TypeError:
        del node[leaf]
        node[leaf] = value
