"""Training loop: one process or DDP (torchrun / slurm), exact resume, preemption-safe.

Run directory `{root_dir}/expts/{config}/{run_num}/` (utils/run_layout.py; rank 0 writes,
every file atomically):
  hyperparams.yaml         the config as run (with --set overrides and derived sizes)
  checkpoints/ckpt.tar     latest state, written at every validation check (or every
                           `ckpt_every_s` seconds), at the end and on SIGTERM/SIGUSR1
  checkpoints/ckpt_best.tar  the check with the lowest validation loss (`val_metric`: the
                           loss or the relative L2 error): written at that check
                           when ckpt.tar is; with `ckpt_every_s` kept in memory and written
                           just before the next ckpt.tar (time, signal, end)
  metrics.jsonl            one JSON object per validation check
  train_summary.json       written when training reaches its end

Loss scaling under DDP: the loss of a batch is the mean over its samples of a per-sample loss
(see utils.loss_utils), every rank has the same local batch B/W (training batches are full:
drop_last), and DDP averages gradients over ranks, so W ranks with B/W samples each produce
exactly the gradient of one process with batch B. `batch_size` is the global batch.

Step budget: `max_epochs` is the published fixed-epoch protocol. `min_steps: S` (default 0: off)
gives every run at least S optimizer steps: the run trains `epochs_for_steps(max_epochs, S,
steps_per_epoch)` (utils/optim.py) epochs (more for a small training set) and the cosine schedule spans those
epochs (unless `max_cosine_lr_epochs` is set).

Converged training (study runs): `max_steps` > 0 makes the run's length a number of optimizer
steps (the cap); `early_stop_patience: P` > 0 stops it at the validation check that is the
P-th in a row without a relative improvement of `early_stop_min_delta` (`EarlyStopping`);
`scheduler: plateau` is warm-up + constant lr, multiplied by `lr_plateau_factor` after
`lr_plateau_patience` checks without improvement (`PlateauSchedule`). train_summary.json
records `stopped_early`, `stop_step`, `best_step`, `max_steps` and `capped_while_improving`.

Cadence: validation (and with it the latest checkpoint) happens every `check_interval`
optimizer steps = max(val_every_steps, steps per epoch), i.e. every epoch by default, and
always after the last step; `val_every_growth: g` > 0 spaces the checks at least g times the
steps trained so far apart (`next_check_step`), so early stopping's and the plateau
schedule's patience, counted in checks, grow with the run. The cosine schedule does not
depend on the cadence: it steps at every epoch end. A 1-step epoch with val_every_steps 50
validates every 50 epochs.

Epochs are counted from 1: checkpoint `epoch` = number of completed epochs; a checkpoint
written between two checks (on a signal, or by `ckpt_every_s`) may be inside an epoch: it
records `step_in_epoch` (> 0) and the training-loss sums since the last check (`partial`),
and resume continues with the next batch of the same (seeded) epoch order.
"""
import logging
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from utils.checkpoint import (build_model_info, clean_state_dict, data_fingerprints,
                              describe_load_error, load_weights, safe_torch_load,
                              host_copy, save_checkpoint, scales_from_weights)
from utils.data_utils import get_data_loader
from utils.distributed import get_rng_state, set_rng_state, set_seed, setup_distributed
from utils.errors import (CheckpointError, DataError, StorageError, TrainingDiverged,
                          UserError)
from utils.fileio import write_json_atomic, write_text_atomic, writing
from utils.finetune import apply_finetune_mode, export_state_dict, has_adapters
from utils.inferencer import autocast_context, evaluate
from utils.loss_utils import TrainingLoss
from utils.metrics_log import append_metrics, truncate_metrics
from utils.optim import (EarlyStopping, PlateauSchedule, adapt_cosine_period,
                         build_optimizer, build_scheduler, check_interval, epochs_for_steps,
                         next_check_step)
from utils.run_guard import DirLock, pending_stop_signal, refuse_symlinks
from utils.run_layout import RunLayout
from utils.train_checks import check_data_unchanged, check_resume_config, check_training_config
from utils.wandb_log import init_run, log_check


# --------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Train `fno(params)` into `run_dir`; `fit()` runs to max_epochs or until a signal."""

    def __init__(self, params, run_dir, run_name=None):
        self._lock = None
        try:
            self._build(params, run_dir, run_name)
        except BaseException:
            self.close()   # a failed start must not keep the run directory locked
            raise

    def _build(self, params, run_dir, run_name):
        from models.fno import fno

        self.params = params
        self.layout = RunLayout(run_dir)
        self.run_dir = self.layout.run_dir
        self.ckpt_dir = self.layout.ckpt_dir
        self.ckpt_path = self.layout.ckpt
        self.best_path = self.layout.best_ckpt
        self.metrics_path = self.layout.metrics
        # without scales_path, normalise as the model this run starts from (its model_info)
        scales_from_weights(params, self.ckpt_path if os.path.isfile(self.ckpt_path)
                            else params.get("pretrained"))
        check_training_config(params)
        self.run_name = run_name or os.path.basename(self.run_dir)
        self.world, self.rank, self.local_rank, self.device = setup_distributed()
        self.distributed = dist.is_initialized()
        self.is_root = self.rank == 0
        self._lock = self._lock_run_dir()   # before anything of the run is read or written
        self.loss = TrainingLoss.from_params(params)
        self.amp = bool(params.amp)
        self.max_epochs = int(params.max_epochs)

        set_seed(int(params.seed or 0))
        self.train_loader, self.train_set, self.train_sampler = get_data_loader(
            params, params.train_path, self.distributed, train=True)
        self.val_loader, self.val_set, _ = get_data_loader(
            params, params.val_path, self.distributed, train=False)
        self.local_batch = self.train_loader.batch_size
        self.global_batch = self.local_batch * self.world
        # optimizer steps per epoch (the same on every rank: DistributedSampler, drop_last)
        self.steps_per_epoch = len(self.train_loader)
        self.max_epochs = epochs_for_steps(self.max_epochs, params.min_steps or 0,
                                           self.steps_per_epoch)
        if params.max_steps:   # a budget in steps: the epochs it takes (the last one partial)
            self.max_epochs = -(-int(params.max_steps) // self.steps_per_epoch)
            logging.info("max_steps %d: %d epochs of %d steps", params.max_steps,
                         self.max_epochs, self.steps_per_epoch)
        elif self.max_epochs > int(params.max_epochs):
            logging.info("min_steps %d: %d epochs of %d steps instead of max_epochs %d",
                         params.min_steps, self.max_epochs, self.steps_per_epoch,
                         int(params.max_epochs))

        self.raw_model = fno(params).to(self.device)  # the module whose state is saved
        # frozen / adapters added before the optimizer and DDP see the model; re-applied on resume
        self.frozen = apply_finetune_mode(self.raw_model, params)
        self.n_params = sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)
        # what a user of the checkpoints needs (utils/checkpoint.py); metrics added per save
        self.model_info = build_model_info(params)
        self.last_val = None     # (val_loss, val_rel_l2) of the current weights
        self.optimizer = build_optimizer(params, self.raw_model)
        self.scheduler = build_scheduler(params, self.optimizer, self.max_epochs)

        # cadence: a validation check every `check_every` steps and after the last one
        self.total_steps = int(params.max_steps or self.max_epochs * self.steps_per_epoch)
        self.check_every = check_interval(params.val_every_steps, self.steps_per_epoch)
        self.check_growth = float(params.val_every_growth or 0)
        self.val_metric = params.val_metric
        self.ckpt_every_s = float(params.ckpt_every_s or 0)
        # early stopping (patience 0: off; the rule's state is kept for the summary's flag)
        self.early_stop = EarlyStopping(params.early_stop_patience, params.early_stop_min_delta)

        self.epoch = 0           # completed epochs
        self.iters = 0           # optimizer steps taken
        self.step_in_epoch = 0   # steps taken in epoch self.epoch + 1
        self.partial = None      # training-loss sums since the last check, of a checkpoint
        self.best_val_loss = math.inf
        self.best_val_rel_l2 = math.inf
        self.best_epoch = 0
        self.best_step = 0
        # rank 0: the checkpoint of a new best not yet in ckpt_best.tar (ckpt_every_s > 0)
        self._unsaved_best = None
        self.data_fingerprints = data_fingerprints(params)   # checked on resume, saved
        self.resumed = os.path.isfile(self.ckpt_path)
        if self.resumed:
            self._restore(self.ckpt_path)
        elif params.pretrained:
            load_weights(self.raw_model, params.pretrained,  # weights only, fresh optimizer
                         strict=bool(params.pretrained_strict))
        self.next_check = self._next_check()   # the step of the next validation check

        model = self.raw_model
        if self.distributed:
            model = DistributedDataParallel(
                model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        if params.compile:
            model = torch.compile(model)
        self.model = model
        self._stop_signal = None
        def prepare():
            with writing(self.ckpt_dir):
                os.makedirs(self.ckpt_dir, exist_ok=True)
            self._write_hyperparams()
            truncate_metrics(self.metrics_path, self.iters, self.epoch)
        self._on_root(prepare, "prepare the run directory")
        logging.info("run %s: %d parameters, %d train / %d val samples, global batch %d "
                     "(%d ranks x %d), device %s%s", self.run_dir, self.n_params, len(self.train_set),
                     len(self.val_set), self.global_batch, self.world, self.local_batch, self.device,
                     f", resumed at epoch {self.epoch} step {self.step_in_epoch}" if self.resumed
                     else (f", fine-tuning from {params.pretrained}" if params.pretrained else ""))

    # ---------------------------------------------------------------- checkpoints / run files
    def _lock_run_dir(self):
        """Rank 0 takes the run directory's lock (held until `close`/process exit); every rank
        raises UserError if it is held by another process (one run per directory)."""
        held = []

        def lock():
            lay = self.layout   # files written in place or replaced: never through a link
            refuse_symlinks([lay.ckpt_dir, lay.ckpt, lay.best_ckpt, lay.model_card,
                             lay.hyperparams, lay.metrics, lay.train_summary], "run directory")
            held.append(DirLock(self.run_dir, "run directory").acquire())
        self._on_root(lock, "lock the run directory", UserError)
        return held[0] if held else None

    def close(self):
        """Release the run directory (fit() does this when it returns or fails)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _checkpoint(self, partial=None, at_check=True):
        return dict(
            # plain weights (LoRA adapters merged): what eval.py and `pretrained` load
            model_state=export_state_dict(self.raw_model),
            # with LoRA, the frozen base weights and the adapters apart: exact resume
            lora_state=(clean_state_dict(self.raw_model.state_dict())
                        if has_adapters(self.raw_model) else None),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict() if self.scheduler else None,
            epoch=self.epoch, iters=self.iters, step_in_epoch=self.step_in_epoch,
            partial=partial, best_val_loss=self.best_val_loss,
            best_val_rel_l2=self.best_val_rel_l2, best_epoch=self.best_epoch,
            best_step=self.best_step, early_stop=self.early_stop.state_dict(),
            rng_state=get_rng_state(), world_size=self.world,
            config=self.params.to_dict(), model_info=self._model_info(at_check),
            data_fingerprints=self.data_fingerprints)

    def _model_info(self, at_check=True):
        """model_info with the validation metrics of the weights being saved (none between
        two checks: those weights were not validated)."""
        val = self.last_val if at_check else None
        metrics = dict(epoch=self._epoch_of_step(), step=self.iters, n_val=len(self.val_set),
                       val_loss=val[0] if val else None, val_rel_l2=val[1] if val else None)
        return dict(self.model_info, metrics=metrics)

    def _epoch_of_step(self):
        """The 1-based epoch of the last step taken (its epoch number in metrics.jsonl)."""
        return -(-self.iters // self.steps_per_epoch)

    def _save(self, is_best=False, latest=True, row=None):
        """Rank 0 appends the metrics `row` (a validation check) and writes ckpt.tar
        (`latest`) after all ranks reached this point; a failed write (full disk) raises
        StorageError on every rank. Without a row the checkpoint lies between two checks and
        carries the training-loss sums since the last one.

        `is_best` (this check is a new best): its checkpoint goes to ckpt_best.tar with the
        next ckpt.tar, just before it, so ckpt.tar's best_* fields always describe the
        ckpt_best.tar on disk and resume needs nothing else; until then rank 0 keeps a host
        copy (`host_copy`: weights + optimizer state). With `ckpt_every_s` 0 every check
        writes ckpt.tar, so the best is written at its check as before; with `ckpt_every_s`
        a run makes one best write per time-due, signal or final ckpt.tar instead of one per
        improving check (each an fsync'd file and the model card)."""
        partial = None
        if row is None:   # global sums over all ranks (a collective); rank 0 adds them back
            sums = self._allreduce_sum(self._interval_sums())
            partial = dict(loss_sum=sums[0].item(), count=int(sums[1].item()))
        if self.distributed:
            dist.barrier()

        def write():
            if row is not None:   # the row first: a crash before the checkpoint drops it on resume
                append_metrics(self.metrics_path, row)
            if not self.params.save_checkpoint or not (is_best or latest):
                return
            ckpt = self._checkpoint(partial, at_check=row is not None)
            if is_best:   # written with ckpt.tar: now, or kept safe from the next steps
                self._unsaved_best = ckpt if latest else host_copy(ckpt)
            if latest:
                if self._unsaved_best is not None:
                    # best first: a crash in between only repeats its checks on resume
                    save_checkpoint(self._unsaved_best, self.best_path,
                                    card_path=self.layout.model_card)
                    self._unsaved_best = None
                save_checkpoint(ckpt, self.ckpt_path)
        self._on_root(write, "write the checkpoint")
        if latest:
            self._last_ckpt_time = time.time()
            self._last_saved_iters = self.iters

    def _on_root(self, fn, what, other_ranks_raise=StorageError):
        """Run fn() on rank 0 only; if it raises a UserError or StorageError, every rank
        raises (no rank is left waiting in a collective for a rank that failed; the other
        ranks raise `other_ranks_raise`, rank 0 reports the reason)."""
        error = None
        if self.is_root:
            try:
                fn()
            except (UserError, StorageError) as e:
                error = e
        if self.distributed:
            failed = torch.tensor([float(error is not None)], device=self.device)
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and error is None:
                error = other_ranks_raise(f"rank 0 could not {what}")
        if error is not None:
            raise error

    def _restore(self, path):
        def unreadable(e):
            return CheckpointError(f"cannot resume from {path}: {describe_load_error(e)}; move "
                                   f"it away to start this run afresh")
        try:
            ckpt = safe_torch_load(path, map_location=self.device)
        except Exception as e:
            raise unreadable(e) from e
        # the settings first: a changed model (layers, modes, ...) is a changed setting, named
        # as such, not a state dict that fails to load
        check_resume_config(ckpt, self.params, self.run_dir)
        check_data_unchanged(ckpt, self.data_fingerprints, self.run_dir, path)
        try:
            self.raw_model.load_state_dict(clean_state_dict(ckpt.get("lora_state")
                                                            or ckpt["model_state"]))
            self.optimizer.load_state_dict(ckpt["optimizer_state"])
            if self.scheduler is not None and ckpt.get("scheduler_state") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler_state"])
        except Exception as e:
            raise unreadable(e) from e
        if self.scheduler is not None:
            adapt_cosine_period(self.scheduler, self.optimizer,
                                int(self.params.get("max_cosine_lr_epochs") or self.max_epochs))
        self.epoch = int(ckpt["epoch"])
        self.iters = int(ckpt["iters"])
        self.step_in_epoch = int(ckpt.get("step_in_epoch", 0) or 0)
        self.partial = ckpt.get("partial")
        self.best_val_loss = float(ckpt["best_val_loss"])
        self.best_val_rel_l2 = float(ckpt["best_val_rel_l2"])
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.best_step = int(ckpt.get("best_step", self.best_epoch * self.steps_per_epoch))
        self.early_stop.load_state_dict(ckpt.get("early_stop"))
        set_rng_state(ckpt["rng_state"])
        old_world = ckpt.get("world_size", self.world)
        if self.step_in_epoch and old_world != self.world:
            # another sharding of the epoch: its steps are counted (and checked) again
            logging.warning("mid-epoch checkpoint written with %d ranks, resuming with %d: "
                            "restarting epoch %d", old_world, self.world, self.epoch + 1)
            self.iters -= self.step_in_epoch
            self.step_in_epoch, self.partial = 0, None

    def _write_hyperparams(self):
        hp = self.params.to_dict()
        hp.update(world_size=self.world, dist_backend=dist.get_backend() if self.distributed
                  else None, global_batch_size=self.global_batch,
                  local_batch_size=self.local_batch, n_train=len(self.train_set),
                  subset_hash=self._subset_hash(), epochs_run=self.max_epochs,
                  steps_per_epoch=self.steps_per_epoch, steps_run=self.total_steps,
                  check_every_steps=self.check_every,
                  n_params=self.n_params, config_name=self.params.config_name)
        write_text_atomic(self.layout.hyperparams,
                          yaml.safe_dump(hp, sort_keys=False))

    def _subset_hash(self):
        """Fingerprint of the training rows (utils.data_utils.subset_hash); '' for a split of
        several files."""
        return getattr(self.train_set, "subset_hash", "")

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self._stop_signal is not None:
            raise KeyboardInterrupt   # a second Ctrl-C: stop now, without a checkpoint
        self._stop_signal = signum
        logging.warning("received signal %d: finishing this step, then checkpoint and exit", signum)

    def _install_signal_handlers(self):
        # a stop requested while the run started (train.py records it: run_guard)
        self._stop_signal = self._stop_signal or pending_stop_signal()
        self._old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
                # restart interrupted system calls (SA_RESTART): a signal must not break a
                # blocking read of the communication library's threads (gloo/nccl sockets)
                signal.siginterrupt(sig, False)
            except ValueError:  # not the main thread (e.g. inside a notebook worker)
                pass

    def _restore_signal_handlers(self):
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)

    def _sync_flags(self, loss):
        """(stop requested, non-finite loss, checkpoint time due) after a step, each agreed by
        all ranks (true on any rank: true on all).

        Collective under DDP: every rank calls it after every step. The time is rank 0's."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(())
        due = (self.is_root and self.ckpt_every_s > 0
               and time.time() - self._last_ckpt_time >= self.ckpt_every_s)
        flags = torch.stack([torch.tensor(float(self._stop_signal is not None), device=bad.device),
                             bad, torch.tensor(float(due), device=bad.device)])
        if self.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, bad, due = flags.tolist()
        return stop > 0, bad > 0, due > 0

    def _stop_requested(self):
        """True when a stop signal reached any rank (collective under DDP)."""
        flag = torch.tensor([float(self._stop_signal is not None)], device=self.device)
        if self.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    # ---------------------------------------------------------------- training
    def _interval_sums(self):
        """This rank's (training-loss sum, sample count) since the last check, float64."""
        return torch.stack([self._loss_sum.clone(), torch.tensor(
            float(self._count), dtype=torch.float64, device=self.device)])

    def _reset_interval(self):
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._count = 0            # training samples since the last check (this rank)
        self._seen = 0             # ... of this process (throughput; not restored)
        self._train_seconds = 0.0  # time inside training steps since the last check
        self._interval_t0 = time.time()

    def _next_check(self):
        """The step of the first validation check after the current one (next_check_step)."""
        return next_check_step(self.iters, self.check_every, self.check_growth)

    def _finished(self):
        return self.iters >= self.total_steps or self.early_stop.stopped

    def train_one_epoch(self, epoch, wandb_run=None):
        """Train epoch `epoch` (1-based) from its step `self.step_in_epoch` to its end, or to
        the end of the run; validate and checkpoint at the checks that fall inside it.
        Returns True when a signal stopped the run (a checkpoint was written)."""
        self.model.train()
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.set_start(self.step_in_epoch * self.local_batch)
        clip = self.params.grad_clip
        batches = self.train_loader
        if self.is_root and sys.stderr.isatty():
            from tqdm import tqdm
            batches = tqdm(batches, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        try:
            t0 = time.time()
            for x, y in batches:
                step = self.step_in_epoch
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                with autocast_context(self.device, self.amp):
                    pred = self.model(x)
                loss = self.loss(pred, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), float(clip))
                if isinstance(self.scheduler, PlateauSchedule):   # per step (warm-up)
                    self.scheduler.set_step(self.iters + 1)
                self._step_lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.iters += 1
                # one small all-reduce per step: every rank stops at the same step
                stop, bad, ckpt_due = self._sync_flags(loss)
                if bad:  # nothing of this state is saved
                    self._check_batch_data(x, y, epoch, step)
                    raise TrainingDiverged(
                        f"non-finite training loss at epoch {epoch} step {step + 1} (iteration "
                        f"{self.iters}); stopped without writing checkpoints, the last good one "
                        f"is at iteration {self._last_saved_iters} in {self.ckpt_dir}. Lower "
                        f"lr or set grad_clip")
                self._loss_sum += loss.detach().double() * x.shape[0]
                self._count += x.shape[0]
                self._seen += x.shape[0]
                self.step_in_epoch += 1
                if self.step_in_epoch == self.steps_per_epoch:   # the epoch is complete
                    self.epoch, self.step_in_epoch = epoch, 0
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
                        self.scheduler.step()   # the cosine is per epoch
                self._train_seconds += time.time() - t0
                if self.iters >= self.next_check or self._finished():
                    self._check(wandb_run, force_latest=stop or ckpt_due)
                    self.next_check = self._next_check()
                elif stop or ckpt_due:
                    self._save(latest=True)
                if stop:
                    logging.warning("stopped by signal at epoch %d step %d (iteration %d); "
                                    "checkpoint %s", epoch, step + 1, self.iters, self.ckpt_path)
                    return True
                if self._finished():
                    break
                t0 = time.time()
        finally:
            self.train_sampler.set_start(0)
        return False

    def _check_batch_data(self, x, y, epoch, step):
        """A non-finite loss from non-finite DATA is the data's fault, not the optimiser's:
        DataError naming the training file (on every rank: the flag is agreed)."""
        bad = torch.tensor([float(not (torch.isfinite(x).all() and torch.isfinite(y).all()))],
                           device=self.device)
        if self.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            raise DataError(f"the training batch of epoch {epoch} step {step + 1} holds NaN or "
                            f"inf values: check the data {self.params.train_path} (and its "
                            f"scales {self.params.get('scales_path')})")

    def _allreduce_sum(self, t):
        if self.distributed:
            dist.all_reduce(t)
        return t

    def validate(self, n_examples=0):
        """Exact averages over every validation sample: (val_loss, val_rel_l2, examples)."""
        res = evaluate(self.raw_model, self.val_loader, self.device, self.loss, self.amp,
                       n_examples=n_examples)
        sums = torch.stack([res["loss_sum"], res["rel_l2_sum"],
                            torch.tensor(float(res["count"]), dtype=torch.float64, device=self.device)])
        sums = self._allreduce_sum(sums)
        return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item(), res.get("examples")

    # ---------------------------------------------------------------- main loop
    def _check(self, wandb_run, force_latest=False):
        """A validation check after step self.iters: validate, update the best, append the
        metrics row, write ckpt.tar (at every check when ckpt_every_s is 0; else when
        `force_latest`, i.e. the time is due or a signal came, and at the end) and, before
        it, ckpt_best.tar of the best check since the last ckpt.tar (`_save`)."""
        want_fig = bool(wandb_run) and self.params.plot_figs
        epoch = self._epoch_of_step()
        val_loss, val_rel, examples = self.validate(n_examples=1 if want_fig else 0)
        if not (math.isfinite(val_loss) and math.isfinite(val_rel)):
            if all(torch.isfinite(p).all() for p in self.raw_model.parameters()):
                raise DataError(f"non-finite validation loss at epoch {epoch} from a "
                                f"finite model: check the data {self.params.val_path}")
            raise TrainingDiverged(f"non-finite validation loss at epoch {epoch}; "
                                   f"stopped without writing checkpoints")
        self.last_val = (val_loss, val_rel)
        # the metric that picks the best check and drives early stopping and the plateau
        # schedule: the training loss (published) or the relative L2 error the study reports
        score, best = ((val_rel, self.best_val_rel_l2) if self.val_metric == "rel_l2"
                       else (val_loss, self.best_val_loss))
        is_best = score <= best
        if is_best:
            self.best_val_loss, self.best_val_rel_l2 = val_loss, val_rel
            self.best_epoch, self.best_step = epoch, self.iters
        if self.early_stop.update(score):
            logging.info("early stopping at step %d: %d checks without a %g relative "
                         "improvement of the validation %s (best at step %d)", self.iters,
                         self.early_stop.bad_checks, self.early_stop.min_delta,
                         self.val_metric, self.best_step)
        if isinstance(self.scheduler, PlateauSchedule):
            self.scheduler.on_check(score)
        total = self._allreduce_sum(self._interval_sums())
        train_loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        samples = self._seen * self.world
        row = dict(epoch=epoch, iters=self.iters, train_loss=train_loss, val_loss=val_loss,
                   val_rel_l2=val_rel, lr=self._step_lr,
                   interval_time_s=time.time() - self._interval_t0,
                   train_time_s=self._train_seconds,
                   train_samples_per_s=samples / max(self._train_seconds, 1e-9),
                   best_val_loss=self.best_val_loss)
        latest = self.ckpt_every_s == 0 or force_latest or self._finished()
        self._save(is_best=is_best, latest=latest, row=row)
        self._reset_interval()
        if self.is_root:
            logging.info("epoch %d/%d step %d/%d  train %.4g  val %.4g  val rel L2 %.4g  lr %.3g"
                         "  %.1fs (%.1f samples/s)%s", epoch, self.max_epochs, self.iters,
                         self.total_steps, train_loss, val_loss, val_rel, self._step_lr,
                         row["interval_time_s"], row["train_samples_per_s"],
                         "  *best" if is_best else "")
            if wandb_run:
                log_check(wandb_run, row, examples)

    def fit(self):
        """Train to the end of the run. Returns the summary dict (also in train_summary.json),
        or dict(stopped=True, ...) after a SIGTERM/SIGUSR1 checkpoint."""
        wandb_run, own_run = None, False
        self._install_signal_handlers()
        try:
            if self._stop_requested():   # a signal during start-up, on any rank
                logging.warning("stopped by signal %s before the first step; nothing new to "
                                "checkpoint, rerun the same command to %s",
                                self._stop_signal or "(another rank)",
                                "resume" if self.resumed else "start")
                return dict(stopped=True, epoch=self.epoch, iters=self.iters)
            if self.is_root and self.params.log_to_wandb:
                wandb_run, own_run = init_run(self.params, self.run_dir, self.run_name,
                                              self.layout.wandb_dir)
            self._reset_interval()
            if self.partial and self.is_root:   # the restored sums are global: rank 0 adds them
                self._loss_sum += float(self.partial["loss_sum"])
                self._count += int(self.partial["count"])
            self.partial = None
            self._last_ckpt_time = time.time()
            self._last_saved_iters = self.iters
            self._step_lr = self.optimizer.param_groups[0]["lr"]
            while not self._finished():
                if self.train_one_epoch(self.epoch + 1, wandb_run):
                    return dict(stopped=True, epoch=self.epoch, iters=self.iters)
            summary = dict(best_val_loss=self.best_val_loss, best_val_rel_l2=self.best_val_rel_l2,
                           best_epoch=self.best_epoch, best_step=self.best_step,
                           epochs=self.epoch, n_train=len(self.train_set),
                           n_params=self.n_params, config=self.params.config_name,
                           global_batch_size=self.global_batch, world_size=self.world,
                           iters=self.iters, steps_per_epoch=self.steps_per_epoch,
                           check_every_steps=self.check_every,
                           val_checks=self.early_stop.val_checks,
                           max_steps=self.total_steps, stop_step=self.iters,
                           stopped_early=self.early_stop.stopped,
                           capped_while_improving=self.early_stop.capped_while_improving(),
                           seed=int(self.params.seed or 0),
                           subset_hash=self._subset_hash(), run_dir=self.run_dir)
            self._on_root(lambda: write_json_atomic(self.layout.train_summary, summary),
                          "write the summary")
            return summary
        finally:
            self._restore_signal_handlers()
            if wandb_run and own_run:
                wandb_run.finish()
            self.close()
