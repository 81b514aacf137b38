"""The training loop: AdamW, linear warm-up, gradient accumulation, mixed precision, seed, resume, cancel.

Model-agnostic: `loss_fn(indices, seeds)` computes the loss of one micro-batch (dataset indices and a
seed per sample for its noise and timestep) and returns {"loss": total, ...parts}; the trainables
are an nn.Module whose trainable parameters the optimiser updates.

Determinism by construction: which samples a step uses and each sample's seed are functions of
(seed, step, micro-step, position in the global batch) only. So a resumed run continues exactly
where the saved one was, and N data-parallel processes each taking their slice of the global batch
(DDP averaging gradients) follow the same trajectory as one process taking the whole global batch.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

log = logging.getLogger("partid.training")

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingCancelled(Exception):
    """Raised between steps when the cancel check fires; the last saved state stays as it was."""

    def __init__(self, step: int):
        super().__init__(f"training cancelled before step {step + 1}")
        self.step = step


@dataclass
class TrainConfig:
    steps: int = 100                  # optimiser steps (in total, counting those of a resumed run)
    batch_size: int = 1               # per process and micro-step
    grad_accumulation: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 0               # steps between saves; 0: only at the end
    max_grad_norm: float = 0.0        # 0: no clipping
    adam_eps: float = 1e-8

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accumulation < 1:
            raise ValueError("steps, batch_size and grad_accumulation must be at least 1")


@dataclass
class RunState:
    step: int = 0
    history: list = field(default_factory=list)   # one dict per optimiser step


def batch_plan(config: TrainConfig, dataset_size: int, step: int, micro: int, rank: int = 0, world: int = 1
               ) -> tuple[list[int], list[int]]:
    """(dataset indices, per-sample seeds) of this process's share of one micro-batch."""
    gen = torch.Generator().manual_seed(hash((config.seed, step, micro)) & 0x7FFF_FFFF_FFFF)
    global_batch = config.batch_size * world
    rounds = math.ceil(global_batch / dataset_size)
    order = torch.cat([torch.randperm(dataset_size, generator=gen) for _ in range(rounds)])[:global_batch]
    lo, hi = rank * config.batch_size, (rank + 1) * config.batch_size
    seeds = [hash((config.seed, step, micro, pos)) & 0x7FFF_FFFF for pos in range(lo, hi)]
    return order[lo:hi].tolist(), seeds


def remove_state(state_path: str) -> None:
    """Delete a run's resume state (the trained tensors and the optimiser file Trainer.save_state writes)."""
    for suffix in (".pt", ".safetensors"):
        if os.path.isfile(state_path + suffix):
            os.remove(state_path + suffix)


def warmup_factor(step: int, warmup: int) -> float:
    return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


class _LossModule(nn.Module):
    """Puts the loss computation inside a module forward, which DistributedDataParallel needs."""

    def __init__(self, trainables: nn.Module, loss_fn: Callable):
        super().__init__()
        self.trainables = trainables
        self.loss_fn = loss_fn

    def forward(self, indices, seeds):
        return self.loss_fn(indices, seeds)


class Trainer:
    def __init__(self, trainables: nn.Module, loss_fn: Callable[[list, list], dict], dataset_size: int,
                 config: TrainConfig, device: torch.device | str = "cpu", state_path: str | None = None,
                 save_fn: Callable[[int], None] | None = None, should_cancel: Callable[[], bool] | None = None,
                 progress: Callable[[int, int, dict], None] | None = None, distributed: bool = False):
        self.trainables, self.config, self.device = trainables, config, torch.device(device)
        self.dataset_size = dataset_size
        self.state_path, self.save_fn = state_path, save_fn
        self.should_cancel, self.progress = should_cancel, progress
        self.params = [p for p in trainables.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: no parameter requires grad")
        self.rank, self.world = 0, 1
        module: nn.Module = _LossModule(trainables, loss_fn)
        if distributed:
            import torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel

            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            module = DistributedDataParallel(module, device_ids=None if self.device.type == "cpu" else [self.device],
                                             find_unused_parameters=True)
        self.module = module
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           eps=config.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_factor(s, config.warmup_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.state = RunState()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- resume ------------------------------------------------------------------------------------------
    def save_state(self) -> None:
        """Trained tensors (safetensors) + optimiser/scheduler/step/history (torch.save of plain data)."""
        if not (self.state_path and self.is_main):
            return
        from safetensors.torch import save_file

        tmp = self.state_path + ".tmp"
        save_file({k: v.contiguous().cpu() for k, v in self.trainables.trained_state().items()}, tmp + ".safetensors")
        torch.save({"step": self.state.step, "history": self.state.history, "config": asdict(self.config),
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict()}, tmp + ".pt")
        # Replace both files only once both are written: a crash mid-save keeps the previous state.
        os.replace(tmp + ".safetensors", self.state_path + ".safetensors")
        os.replace(tmp + ".pt", self.state_path + ".pt")

    def load_state(self) -> bool:
        """Resume from state_path if it exists; True when resumed."""
        if not self.state_path or not os.path.isfile(self.state_path + ".pt"):
            return False
        from safetensors.torch import load_file

        self.trainables.load_trained_state(load_file(self.state_path + ".safetensors", device=str(self.device)))
        data = torch.load(self.state_path + ".pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.scaler.load_state_dict(data["scaler"])
        self.state = RunState(int(data["step"]), list(data["history"]))
        log.info("[PartID] training resumed at step %d from %s", self.state.step, self.state_path)
        return True

    # --- loop --------------------------------------------------------------------------------------------
    def _micro_step(self, step: int, micro: int, last: bool) -> dict:
        cfg = self.config
        indices, seeds = batch_plan(cfg, self.dataset_size, step, micro, self.rank, self.world)
        dtype = PRECISIONS[cfg.precision]
        sync = getattr(self.module, "no_sync", None)
        import contextlib

        context = contextlib.nullcontext() if (last or sync is None) else sync()
        with context:
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
                parts = self.module(indices, seeds)
            loss = parts["loss"].float() / cfg.grad_accumulation
            self.scaler.scale(loss).backward()
        return {k: float(v.detach()) if torch.is_tensor(v) else v for k, v in parts.items()}

    def run(self) -> RunState:
        cfg = self.config
        while self.state.step < cfg.steps:
            step = self.state.step
            if self.should_cancel is not None and self.should_cancel():
                raise TrainingCancelled(step)
            self.optimizer.zero_grad(set_to_none=True)
            logs: dict = {}
            for micro in range(cfg.grad_accumulation):
                parts = self._micro_step(step, micro, micro == cfg.grad_accumulation - 1)
                for k, v in parts.items():
                    if isinstance(v, float):
                        logs[k] = logs.get(k, 0.0) + v / cfg.grad_accumulation
            if cfg.max_grad_norm > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            logs["lr"] = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.state.step = step + 1
            self.state.history.append({"step": self.state.step, **logs})
            done = self.state.step == cfg.steps
            if done or (cfg.save_every and self.state.step % cfg.save_every == 0):
                if self.save_fn is not None and self.is_main:
                    self.save_fn(self.state.step)
                self.save_state()
            # After the save: ComfyUI's progress hook raises on a cancel, which must not lose a finished save step.
            if self.progress is not None:
                self.progress(self.state.step, cfg.steps, logs)
        return self.state
