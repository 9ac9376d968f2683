"""The CPU-budget training run the UNet baselines share: budget, schedule, checkpoint, resume, run facts.

The 2D baseline (unet_baseline.py, against Med-NCA) and the 3D one (unet3d_baseline.py, against
OSS-Net) are trained for a budget of *process CPU time* (``time.process_time()``, all threads
together, start-up and data loading included, summed over resumed sessions), not wall time, so
that the comparison stays fair when other processes share the cores. The learning rate follows
a cosine over the fraction of that budget spent, so the schedule ends when the budget does. A
checkpoint (model, optimizer, iteration, running loss, clocks and every random state) is written
to the work directory every few wall minutes, and a run started again with the same arguments
resumes from it where it stopped.

What each baseline learns on (samples, augmentation, loss, optimizer) stays in its script; this
module holds only how the budget is counted and spent and how a run is saved and described, so
that the two baselines count their budgets the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from EfficientSegmentationCommon.hardware import hardware_description
from EfficientSegmentationCommon.training import cosine_decay


def add_run_arguments(parser: argparse.ArgumentParser, data: Path, split: Path) -> None:
    """The options that say what a run is and where it goes, first in ``--help``: budget, output, work
    directory, data and split (``data``, ``split``: the defaults of the model the baseline is compared with)."""
    parser.add_argument("--cpu-minutes", type=float, required=True,
                        help="training budget in process CPU minutes (all threads, summed over resumes)")
    parser.add_argument("--output", type=Path, required=True, help="state_dict; <output>.json gets the run facts")
    parser.add_argument("--work-dir", type=Path, required=True, help="checkpoint and log; resumed from if present")
    parser.add_argument("--data", type=Path, default=data)
    parser.add_argument("--split", type=Path, default=split)


def add_session_arguments(parser: argparse.ArgumentParser, threads: int) -> None:
    """The options of the session, after the baseline's own ones in ``--help``: seed, threads, checkpoint interval."""
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0, help="wall minutes between checkpoints")


def start_session(threads: int, seed: int) -> tuple[np.random.Generator, torch.Generator]:
    """Set torch's thread count and global seed, and return the run's numpy and torch generators.

    Call it before building the model: its initial weights come from torch's global generator.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


class BudgetTraining:
    """One training run bounded by process CPU time, resumed from ``<work-dir>/checkpoint.pt`` if present.

    ``args`` holds the options of :func:`add_run_arguments` and :func:`add_session_arguments` and
    the baseline's ``--lr`` (the peak of the cosine). ``rng`` and ``generator`` are the ones every
    random draw of the run comes from (:func:`start_session`); their states, and torch's global
    one, are checkpointed with the model so that a resumed run continues the same random sequence.
    """

    def __init__(self, args: argparse.Namespace, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 rng: np.random.Generator, generator: torch.Generator) -> None:
        self.args, self.model, self.optimizer, self.rng, self.generator = args, model, optimizer, rng, generator
        self.budget = args.cpu_minutes * 60
        # CPU and wall seconds spent by earlier sessions of this run (resume); this session's are added.
        self.cpu_before, self.wall_before, self.iteration, self.running = 0.0, 0.0, 0, None
        args.work_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = args.work_dir / "checkpoint.pt"
        if self.checkpoint_path.exists():
            checkpoint = torch.load(self.checkpoint_path, weights_only=False)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            self.iteration, self.running = checkpoint["iteration"], checkpoint["running"]
            self.cpu_before, self.wall_before = checkpoint["cpu_seconds"], checkpoint["wall_seconds"]
            rng.bit_generator.state = checkpoint["numpy_rng"]
            generator.set_state(checkpoint["torch_rng"])
            torch.set_rng_state(checkpoint["global_rng"])
            print(f"resumed at iteration {self.iteration} ({self.cpu_before / 60:.1f} CPU min, "
                  f"{self.wall_before / 60:.1f} wall min)", flush=True)
        self.session_wall_start = time.monotonic()

    def cpu_seconds(self) -> float:
        """CPU seconds of the whole run: the whole process counts, start-up and data loading included."""
        return self.cpu_before + time.process_time()

    def wall_seconds(self) -> float:
        """Wall seconds of the whole run, earlier sessions included."""
        return self.wall_before + time.monotonic() - self.session_wall_start

    def save_checkpoint(self) -> None:
        """Everything a resumed session needs, written to a temporary file first so that a run
        killed while saving keeps its previous checkpoint."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "iteration": self.iteration, "running": self.running, "cpu_seconds": self.cpu_seconds(),
                 "wall_seconds": self.wall_seconds(), "numpy_rng": self.rng.bit_generator.state,
                 "torch_rng": self.generator.get_state(), "global_rng": torch.get_rng_state(),
                 "args": {k: str(v) for k, v in vars(self.args).items()}}
        torch.save(state, self.checkpoint_path.with_suffix(".tmp"))
        self.checkpoint_path.with_suffix(".tmp").replace(self.checkpoint_path)

    def train(self, batch_loss: Callable[[], torch.Tensor], smoothing: float, log_every: int,
              log_lr: bool = False) -> None:
        """Take optimizer steps until the CPU budget is spent, then checkpoint.

        ``batch_loss`` draws the next (augmented) batch and returns the model's loss on it; the
        model is in training mode. ``smoothing`` is the weight of each new loss in the running
        mean that is logged and reported. Every ``log_every`` iterations a JSON line (iteration,
        CPU and wall minutes, running loss, and with ``log_lr`` the learning rate) goes to
        ``<work-dir>/log.jsonl`` and to stdout; a checkpoint every ``--checkpoint-minutes``.
        """
        with (self.args.work_dir / "log.jsonl").open("a") as log:
            last_save = time.monotonic()
            while (spent := self.cpu_seconds()) < self.budget:
                for group in self.optimizer.param_groups:
                    group["lr"] = cosine_decay(spent / self.budget, self.args.lr)
                self.model.train()
                loss = batch_loss()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                value = loss.item()
                self.running = value if self.running is None else (1 - smoothing) * self.running + smoothing * value
                self.iteration += 1
                if self.iteration % log_every == 0:
                    record = {"iteration": self.iteration, "cpu_minutes": round(self.cpu_seconds() / 60, 2),
                              "wall_minutes": round(self.wall_seconds() / 60, 2), "loss": round(self.running, 4)}
                    if log_lr:
                        record["lr"] = round(self.optimizer.param_groups[0]["lr"], 6)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    print(json.dumps(record), flush=True)
                if time.monotonic() - last_save > self.args.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_save = time.monotonic()
        self.save_checkpoint()

    def finish(self, description: dict, extra: dict | None = None) -> None:
        """Write the state_dict to ``--output`` and the run's facts beside it (``<output>.json``), and say so.

        The facts, in this order: ``description`` (what was trained: model, configuration,
        iterations, the baseline's own settings), what every run reports (seed, threads, budget,
        CPU and wall minutes, final running loss), ``extra``, the command and the hardware.
        """
        args = self.args
        args.output.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), args.output)
        facts = {**description, "seed": args.seed, "threads": args.threads, "cpu_minutes_budget": args.cpu_minutes,
                 "cpu_minutes": round(self.cpu_seconds() / 60, 2), "wall_minutes": round(self.wall_seconds() / 60, 2),
                 "final_loss": None if self.running is None else round(self.running, 4), **(extra or {}),
                 "command": " ".join(sys.argv), "hardware": hardware_description()}
        args.output.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
        print(f"wrote {args.output}: {self.iteration} iterations in {facts['cpu_minutes']} CPU minutes "
              f"({facts['wall_minutes']} wall minutes)", flush=True)
