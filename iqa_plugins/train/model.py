"""``RecipeIQAModel``: pyiqa's GeneralIQAModel with the DR.Experts authors' optimisation recipe.

What it adds to GeneralIQAModel (everything else — network building, losses, validation, checkpoints in
pyiqa's ``{"params": state_dict}`` format — is pyiqa's):

* AdamW-style parameter groups: ``weight_decay`` on weight matrices only; none on 1-D parameters (norms,
  PReLU slopes, scalars such as DSDM's alpha), biases, or names the arch lists in ``no_weight_decay()``.
* A per-iteration lr schedule (``scheduler: {type: WarmupStepLR, warmup_epochs, decay_epochs, ...}``,
  epochs converted to iterations; ``decay_seconds`` instead of ``decay_epochs`` drops the rate on wall time,
  for runs with a time budget); pyiqa's per-epoch ``update_learning_rate`` then does nothing.
* Gradient clipping (``train.grad_clip``) and fp16 autocast with a GradScaler on CUDA (``train.amp``).
* Training steps score each crop as the data set gives it: an arch whose ``forward`` takes ``as_given`` (the
  plugin's archs) is called with ``as_given=True``, so that its test-time protocol (``num_crops`` averaged
  crops, ``resize``) applies to validation only.
* Iterations per epoch come as a constructor argument (the runner knows them once its loader exists); without
  it, ``train.total_iter // train.total_epoch`` as pyiqa's own training pipeline fills them in.
* DistributedDataParallel on CPU too (pyiqa's wrapper asks for a CUDA device id), so ``torchrun`` with the
  gloo backend trains on machines without GPUs. Validation (rank 0 only, as in pyiqa) runs the bare network:
  a DDP forward on one rank alone would wait forever for the others in its buffer broadcast.
* Files: only rank 0 writes; no ``net_best.pth`` (the runner validates the final model only, so a "best"
  copy would be the final one again, or a selection on the test rows).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict

import torch
from pyiqa.models.general_iqa_model import GeneralIQAModel
from torch.nn.parallel import DataParallel, DistributedDataParallel

from iqa_plugins.train.schedule import WarmupStepLR

PER_ITERATION_SCHEDULERS = ("WarmupStepLR",)


def scores_as_given(net: torch.nn.Module) -> bool:
    """Whether ``net``'s forward takes ``as_given`` (score the input as one view, no test-time protocol)."""
    return "as_given" in inspect.signature(net.forward).parameters


def weight_decay_groups(net: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters of ``net`` into a decayed and a non-decayed group.

    Frozen parameters (e.g. the DA-CLIP prior) are left out: the optimiser never sees them.
    """
    skip = set(net.no_weight_decay()) if callable(getattr(net, "no_weight_decay", None)) else set()
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class RecipeIQAModel(GeneralIQAModel):
    """pyiqa model type ``RecipeIQAModel`` (see the module docstring).

    ``iters_per_epoch``: training iterations per epoch, for schedules counted in epochs (``WarmupStepLR``).
    """

    def __init__(self, opt: dict, iters_per_epoch: int | None = None) -> None:
        self._iters_per_epoch = iters_per_epoch
        super().__init__(opt)  # builds the network and, for training, the optimiser and schedule

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        net = net.to(self.device)
        if self.opt["dist"]:
            device_ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
            return DistributedDataParallel(
                net, device_ids=device_ids, find_unused_parameters=self.opt.get("find_unused_parameters", False)
            )
        if self.opt["num_gpu"] > 1:
            return DataParallel(net)
        return net

    def test(self) -> None:
        net = self.get_bare_model(self.net)
        net.eval()
        with torch.no_grad():
            self.output_score = self.net_forward(net)
        net.train()

    def save(self, epoch: int, current_iter: int, save_net_label: str = "net") -> None:
        if self.opt["rank"] == 0:
            super().save(epoch, current_iter, save_net_label)

    def save_network(self, net, net_label, current_iter=None, param_key="params") -> None:
        if net_label != "net_best":
            super().save_network(net, net_label, current_iter, param_key)

    def init_training_settings(self) -> None:
        train_opt = self.opt["train"]
        self.grad_clip = train_opt.get("grad_clip")
        self.use_amp = bool(train_opt.get("amp", True)) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step_options = {"as_given": True} if scores_as_given(self.get_bare_model(self.net)) else {}
        super().init_training_settings()

    def setup_optimizers(self) -> None:
        optim_opt = dict(self.opt["train"]["optim"])
        optim_type = optim_opt.pop("type")
        weight_decay = float(optim_opt.pop("weight_decay", 0.0))
        groups = weight_decay_groups(self.get_bare_model(self.net), weight_decay)
        if not groups:
            raise ValueError("the network has no trainable parameters (all frozen?)")
        self.optimizer = self.get_optimizer(optim_type, groups, **optim_opt)
        self.optimizers.append(self.optimizer)

    def setup_schedulers(self, scheduler_name: str = "scheduler") -> None:
        sched_opt = dict(self.opt["train"][scheduler_name])
        if sched_opt.get("type") not in PER_ITERATION_SCHEDULERS:
            self.per_iteration_schedule = False
            self.opt["train"][scheduler_name] = sched_opt  # pyiqa pops 'type' in place: give it a copy
            super().setup_schedulers(scheduler_name)
            return
        self.per_iteration_schedule = True
        sched_opt.pop("type")
        if ("decay_epochs" in sched_opt) == ("decay_seconds" in sched_opt):
            raise ValueError("WarmupStepLR: set exactly one of train.scheduler.decay_epochs and decay_seconds")
        iters_per_epoch = self.iters_per_epoch()
        decay = ({"step_seconds": float(sched_opt["decay_seconds"])} if "decay_seconds" in sched_opt else
                 {"step_iters": max(1, round(float(sched_opt["decay_epochs"]) * iters_per_epoch))})
        for optimizer in self.optimizers:
            self.schedulers.append(
                WarmupStepLR(
                    optimizer,
                    warmup_iters=round(float(sched_opt.get("warmup_epochs", 0)) * iters_per_epoch),
                    warmup_lr=float(sched_opt.get("warmup_lr", 0.0)),
                    gamma=float(sched_opt.get("gamma", 0.1)),
                    **decay,
                )
            )

    def iters_per_epoch(self) -> int:
        """Iterations per epoch: the constructor's ``iters_per_epoch``, else derived from pyiqa's totals."""
        if self._iters_per_epoch:
            return int(self._iters_per_epoch)
        train_opt = self.opt["train"]
        if train_opt.get("total_epoch") and train_opt.get("total_iter"):
            return max(1, int(train_opt["total_iter"]) // int(train_opt["total_epoch"]))
        raise ValueError("WarmupStepLR counts in epochs: set train.total_epoch and train.total_iter, or build "
                         "the model with iters_per_epoch")

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        # pyiqa's loop calls this once per epoch; a per-iteration schedule steps in optimize_parameters.
        if not self.per_iteration_schedule:
            super().update_learning_rate(current_iter, warmup_iter)

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            inputs = (self.img_input, self.ref_input) if self.use_ref else (self.img_input,)
            self.output_score = self.net(*inputs, **self.step_options)
        losses = OrderedDict()
        if self.cri_mos:
            losses["l_mos"] = self.cri_mos(self.output_score.float(), self.gt_mos)
        if self.cri_metric:
            losses["l_metric"] = self.cri_metric(self.output_score.float(), self.gt_mos)
        if not losses:
            raise ValueError("no loss configured: set train.mos_loss_opt and/or train.metric_loss_opt")
        total = sum(losses.values())
        self.scaler.scale(total).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]], float(self.grad_clip)
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.per_iteration_schedule:
            for scheduler in self.schedulers:
                scheduler.step()
        self.log_dict = self.reduce_loss_dict(losses)


def register() -> None:
    """Add ``RecipeIQAModel`` to pyiqa's MODEL_REGISTRY (idempotent)."""
    from pyiqa.utils.registry import MODEL_REGISTRY

    if "RecipeIQAModel" not in MODEL_REGISTRY._obj_map:
        MODEL_REGISTRY.register(RecipeIQAModel)
