"""One run per workdir, and a resumed run that trains what its checkpoint trained.

:class:`RunLock` holds ``<workdir>/run.lock`` (an ``fcntl`` lock on a file that records the
host, PID and start time) for the life of a training run, so a second run of the same
workdir is refused with a message naming the first. The operating system drops the lock
when its process dies, even by SIGKILL, so a lock file left behind is recognised as stale
and taken over. On file systems without working ``fcntl`` locks across hosts (some network
mounts) only the PID check of a same-host run is reliable.

:func:`check_resume_config` compares a resumed run's config with the one stored in its
checkpoint and refuses a change that alters the results (model, data, losses, optimiser,
seed) unless ``config.train.allow_config_change`` is set; the fields in :data:`HARMLESS`
(step budget, logging, evaluation and checkpoint cadence, prefetching, device counts, and
the model fields that only shape the initial parameters) may change freely.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket

import ml_collections

from helm_jax import configs

LOCK_NAME = "run.lock"

# Config fields a resumed run may change without changing what it trains.
HARMLESS = frozenset({
    "name", "num_devices", "parallel.graph_devices", "parallel.partitioner",
    "train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.max_eval_molecules", "train.allow_config_change",
    "train.early_stop_patience",
    "data.prefetch"} | {f"model.{k}" for k in configs.INIT_ONLY_MODEL_FIELDS})


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir's lock."""


class RunLock:
    """Context manager: exclusive use of ``workdir`` by this process.

    Raises:
      WorkdirInUseError: another process holds the lock (the message names its host and
        PID and what to do).
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirInUseError(
                f"{os.path.dirname(self.path)} is in use by another training run "
                f"({_describe(holder)}). Wait for it to finish, stop it (its checkpoints "
                "resume), or give this run another --workdir.") from None
        stale = _read_holder(fd)
        if stale:
            print(f"Note: taking over a stale lock in {self.path} ({_describe(stale)}; that "
                  "process no longer holds it).", flush=True)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file: released cleanly
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe(holder: dict) -> str:
    if not holder or holder.get("unreadable"):
        return "holder unknown"
    return (f"PID {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}")


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """Fields whose value differs between the checkpoint's config and ``config``, as
    ``{field: (saved, now)}``, without the :data:`HARMLESS` ones. The saved config is
    completed first (:func:`helm_jax.configs.complete`), so fields added since the
    checkpoint was written compare at the value it was trained with. The step budget counts
    as a change when a cosine schedule depends on it."""
    now = configs.flatten(json.loads(config.to_json_best_effort()))
    old = configs.flatten(json.loads(configs.complete(saved).to_json_best_effort()))
    harmless = set(HARMLESS)
    if now.get("optim.schedule") == "cosine":
        harmless.discard("train.num_steps")  # the schedule's length
    changes = {}
    for key in sorted(set(now) | set(old)):
        if key in harmless:
            continue
        a, b = old.get(key, "<absent>"), now.get(key, "<absent>")
        if a != b:
            changes[key] = (a, b)
    return changes


def check_resume_config(saved: dict, config: ml_collections.ConfigDict,
                        workdir: str) -> None:
    """Refuses to resume ``workdir`` with a config that trains something else.

    Raises:
      ValueError: the listed fields differ from the checkpoint's config and
        ``config.train.allow_config_change`` is not set.
    """
    changes = config_changes(saved, config)
    if not changes:
        return
    lines = "\n".join(f"  {k}: {a!r} in the checkpoint, {b!r} now"
                      for k, (a, b) in changes.items())
    if config.train.allow_config_change:
        print(f"Resuming {workdir} with a changed config (allowed):\n{lines}", flush=True)
        return
    raise ValueError(
        f"{workdir} holds a run with other settings; resuming it would mix two "
        f"experiments:\n{lines}\nUse another --workdir for the new settings, rerun with "
        "the checkpoint's settings, or pass --config.train.allow_config_change=True to "
        "continue this run with the new ones.")
