"""The recipe's optimizer and its one learning-rate schedule (warm-up, then constant, cosine or step)."""

from __future__ import annotations

import keras


def learning_rate(recipe, steps_per_epoch, factor=1.0):
    """The recipe's learning-rate schedule (warm-up, then constant, cosine or step).

    One rule for batch sizes: `optimizer.learning_rate` is for the global batch;
    with `optimizer.reference_batch_size` set it is scaled linearly by
    `train.batch_size / reference_batch_size` (Goyal et al., 2017), whatever the
    number of replicas or workers the global batch is split over.
    """
    lr = recipe.optimizer.learning_rate * factor
    if recipe.optimizer.reference_batch_size:
        lr *= recipe.train.batch_size / recipe.optimizer.reference_batch_size
    s = recipe.schedule
    total = max(1, recipe.train.epochs * steps_per_epoch)
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if s.name == "step":
        # Keras keeps a value while step <= boundary: the boundary is the last step of the previous
        # stage, so the first step of epoch `step_epochs` (0-based) already runs at the divided rate.
        boundaries = [b - 1 for b in range(s.step_epochs * steps_per_epoch, total, s.step_epochs * steps_per_epoch)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [lr * s.step_factor**i for i in range(len(boundaries) + 1)])
    if s.name == "constant" and warmup == 0:
        return lr
    # Cosine with alpha=1 stays flat after the warm-up: one code path for both.
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else lr, decay_steps=max(1, total - warmup), alpha=1.0 if s.name == "constant" else 0.0,
        warmup_target=lr if warmup else None, warmup_steps=warmup)


@keras.saving.register_keras_serializable(package="facemtl")
class ContinuedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step + offset)`: a later training phase's new optimizer goes on with the run's schedule.

    Its optimizer counts steps from 0, so without the offset the warm-up would
    run again and a cosine would restart instead of annealing to the end.
    """

    def __init__(self, schedule, offset):
        self.schedule, self.offset = schedule, int(offset)

    def __call__(self, step):
        return self.schedule(step + self.offset)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["offset"])


def build_optimizer(recipe, steps_per_epoch, factor=1.0, first_epoch=0):
    """The recipe's optimizer; `first_epoch`: it starts there (a later phase), on the run's one schedule."""
    o = recipe.optimizer
    lr = learning_rate(recipe, steps_per_epoch, factor)
    if first_epoch and isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = ContinuedSchedule(lr, first_epoch * steps_per_epoch)
    kwargs = {"learning_rate": lr}
    if o.clipnorm:
        kwargs["clipnorm"] = o.clipnorm
    if o.name == "adam":
        return keras.optimizers.Adam(**kwargs)
    if o.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=o.weight_decay, **kwargs)
    return keras.optimizers.SGD(momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay or None, **kwargs)
