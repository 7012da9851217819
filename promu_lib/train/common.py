"""What every training loop shares: seeding, device, AdamW + linear schedule, checkpoints,
early stopping and a non-finite-loss guard (progress reporting: :mod:`promu_lib.progress`).

A checkpoint is a directory of three files, written into a temporary directory and renamed into
place, so an interrupted save never leaves a half checkpoint:

- ``model.safetensors``: the model's state dict;
- ``optimizer.safetensors``: the optimizer's tensors (``state.<param>.<name>``);
- ``trainer.json``: everything else: step, optimizer param groups and scalars, scheduler state,
  the python/numpy/torch RNG states (as lists of numbers) and the caller's ``extra``.

No pickle anywhere, so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from promu_lib.errors import CheckpointError, MissingAssetError, PromuError
from promu_lib.io import atomic_write_bytes, atomic_write_json
from promu_lib.locks import pid_alive

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"

# =============================================================================================
# Seeds and devices
# =============================================================================================


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels.

    ``deterministic`` turns on ``torch.use_deterministic_algorithms`` (warn-only, so a kernel
    without a deterministic version warns instead of failing) and cuBLAS's fixed workspace.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MissingAssetError(
            "a CUDA GPU", ["torch.cuda.is_available()"], "Set run.device=auto or run.device=cpu."
        )
    return torch.device(name)


@contextlib.contextmanager
def one_cpu_thread(device: str = "auto") -> Iterator[None]:
    """Train on one torch thread when the work runs on the CPU, whoever calls.

    CPU float sums depend on how many threads split them, so a result cached by its config
    hash must not depend on its caller: a worker of the jobs pass has one thread, a notebook
    kernel or ``promu finetune`` one per core. (Measured: the toy teacher's pseudo-labels
    differed between 1 and 2 threads, so a default run's tables depended on whether its labels
    were mined by the mining stage or by the jobs pass.) One thread is also what the jobs pass
    found fastest per core for models this small. On a GPU it changes nothing.
    """
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors, and lists of tensors (a precomputed pyramid), onto ``device``."""

    def move(v: Any) -> Any:
        if torch.is_tensor(v):
            return v.to(device, non_blocking=True)
        if isinstance(v, list) and v and all(torch.is_tensor(t) for t in v):
            return [t.to(device, non_blocking=True) for t in v]
        return v

    return {k: move(v) for k, v in batch.items()}


# =============================================================================================
# Optimizer and schedule
# =============================================================================================


def build_optimizer(
    param_groups: Iterable[dict[str, Any]] | Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (each group may carry its own ``lr``/``weight_decay``).

    The fused kernel (one pass over all tensors, CPU and CUDA) takes ~1 ms per step for the
    tiny fusion model where the per-tensor loop took ~5.5 ms; other devices get the default.
    """
    groups = list(param_groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


SCHEDULES: tuple[str, ...] = ("linear", "constant")  # finetune.schedule


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_ratio: float,
    schedule: str = "linear",
    warmup_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``linear``: linear warm-up over ``warmup_ratio * total_steps`` steps, then linear decay
    to 0 at ``total_steps``. ``constant``: linear warm-up over ``warmup_steps``, then the peak
    lr until the end, so the curve does not depend on ``total_steps`` (a cap, not a plan)."""
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps or 0)
    if schedule != "linear":
        raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
    warmup = int(math.ceil(warmup_ratio * total_steps))
    return get_linear_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))


# =============================================================================================
# Checkpoints
# =============================================================================================


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict that safetensors accepts (tied weights become copies)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_weights(
    path: str | Path, module: torch.nn.Module, metadata: dict[str, str] | None = None
) -> Path:
    """The module's weights as one safetensors file, written atomically."""
    return atomic_write_bytes(path, safetensors.torch.save(state_tensors(module), metadata))


def load_weights(path: str | Path, module: torch.nn.Module, strict: bool = True) -> None:
    """Load a safetensors state dict into ``module`` (CheckpointError on any mismatch)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        state = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit this model: {e}") from e


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in rest["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU + CUDA) RNG states as JSON-able lists."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint directory at ``path`` (replacing an older one atomically).

    ``extra`` must be JSON-able (epoch, early-stopping state, history, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    _remove_stale_saves(path)
    prefix = f".{path.name}.{os.getpid()}."  # whose save it is: see _remove_stale_saves
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    try:
        save_weights(tmp / MODEL_FILE, model)
        trainer: dict[str, Any] = {"step": step, "extra": extra or {}, "rng": rng_state()}
        if optimizer is not None:
            tensors, rest = _split_optimizer(optimizer.state_dict())
            atomic_write_bytes(tmp / OPTIMIZER_FILE, safetensors.torch.save(tensors))
            trainer["optimizer"] = rest
        if scheduler is not None:
            trainer["scheduler"] = scheduler.state_dict()
        atomic_write_json(tmp / TRAINER_FILE, trainer, indent=None)
        old = _previous(path)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _remove_stale_saves(path: Path) -> None:
    """Remove the temporary directories of saves killed midway: only those of this process or
    of a process that no longer exists (never another live process's save in progress)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _complete(path: Path) -> bool:
    return (path / TRAINER_FILE).is_file() and (path / MODEL_FILE).is_file()


def _recover(path: Path) -> None:
    """A save killed between its two renames left only the previous checkpoint: restore it."""
    if not path.exists() and _complete(_previous(path)):
        with contextlib.suppress(FileNotFoundError):  # another rank restored it first
            os.replace(_previous(path), path)


def checkpoint_exists(path: str | Path) -> bool:
    """A complete checkpoint is at ``path`` (its trainer.json is written last)."""
    _recover(Path(path))
    return _complete(Path(path))


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns ``{"step", "extra"}``."""
    path = Path(path)
    if not checkpoint_exists(path):
        raise CheckpointError(
            f"{path}: not a complete checkpoint (missing {TRAINER_FILE} or {MODEL_FILE})"
        )
    try:
        trainer = json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / TRAINER_FILE}: not a readable trainer state ({e})") from e
    load_weights(path / MODEL_FILE, model)
    if optimizer is not None:
        if "optimizer" not in trainer:
            raise CheckpointError(f"{path}: holds no optimizer state")
        try:
            tensors = safetensors.torch.load_file(str(path / OPTIMIZER_FILE), device="cpu")
        except Exception as e:  # missing, truncated: safetensors raises its own error types
            raise CheckpointError(
                f"{path / OPTIMIZER_FILE}: not a readable safetensors file ({e})"
            ) from e
        try:
            optimizer.load_state_dict(_join_optimizer(tensors, trainer["optimizer"]))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from e
    if scheduler is not None and "scheduler" in trainer:
        scheduler.load_state_dict(trainer["scheduler"])
    if restore_rng:
        set_rng_state(trainer["rng"])
    return {"step": trainer["step"], "extra": trainer["extra"]}


# =============================================================================================
# Guards and early stopping
# =============================================================================================


class NonFiniteLossError(PromuError):
    """The training loss became NaN or infinite."""


def check_finite(loss: torch.Tensor, step: int, ids: Sequence[str]) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and the batch's posts."""
    if not torch.isfinite(loss.detach()).all():
        shown = ", ".join(ids[:8]) + (f" (+{len(ids) - 8} more)" if len(ids) > 8 else "")
        raise NonFiniteLossError(
            f"loss is {loss.item()} at step {step} on the batch of posts {shown}. Lower the "
            "learning rate, enable gradient clipping, or check those posts' inputs."
        )


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without a strict gain of the monitored value.

    Evaluations at 0 while the best is still 0 do not count: a run that has not yet got
    anything right (an MRE model still predicting only ``None``) has not started learning,
    and stopping it there would measure how fast it takes off, not where it ends."""

    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value``; True when it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        if not (value <= 0.0 and self.best <= 0.0):
            self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self) | {"best": None if math.isinf(self.best) else self.best}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        best = -math.inf if state["best"] is None else state["best"]
        return cls(state["patience"], best, state["best_epoch"], state["bad_epochs"])
