"""The multi-task training task, as tf-models' `tasks/`: model, masked losses with λ, metrics and steps.

One object answers everything a training loop needs to know about the tasks,
so `model.fit` (`compile`) and the multi-worker loop (`train_step`,
`evaluate`) train the same thing the same way:

- `build_model`: the recipe's network (any backbone of the registry);
- `training_view`: the model restricted to the trained heads;
- `build_losses`: per-task losses that ignore missing labels (`IGNORE_LABEL`),
  each averaged over the samples carrying that task's label, with λ from
  `loss_weights`, and the identity margin (ArcFace/CosFace) where set;
- `build_metrics`, `build_optimizer` (the recipe's one learning-rate schedule);
- `compile`: for `fit` (fixed λ, or learned uncertainty weights on top);
- `train_step` / `evaluate`: for a `strategy.run` loop, dividing by the labelled
  count of the *global* batch so gradients equal one process's.

Example:
    >>> task = MultiTaskTask(recipe)
    >>> model = task.build_model(num_identities=20)
    >>> trainee = task.compile(task.training_view(model), steps_per_epoch=100)
    >>> trainee.fit(train_ds, validation_data=val_ds)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from facemtl.config import attribute_tasks, task_list
from facemtl.labels import IGNORE_LABEL
from facemtl.models.heads import COSINE_LAYER
from facemtl.models.multitask import TASKS, build_multitask
from facemtl.training.losses import (
    MaskedSparseCategoricalAccuracy,
    MaskedSparseCategoricalCrossentropy,
    identity_margin,
    masked_crossentropy_sum,
)
from facemtl.training.optimizers import build_optimizer
from facemtl.training.weighting import UncertaintyWeightedModel


def training_view(model, tasks=TASKS):
    """The model restricted to the trained heads (shares all layers and weights).

    Keras requires a target for every output named in `compile`; the
    `embedding` output has none, so `fit` runs on this view. A margin-trained
    identity head (ArcFace/CosFace) exposes its cosines as `identity` here:
    the margin loss needs them, not the served probabilities.
    """
    outputs = {t: model.output[t] for t in tasks if t in model.output}
    if "identity" in outputs and any(layer.name == COSINE_LAYER for layer in model.layers):
        # Keras names a model's outputs after their layers: rename the cosines.
        outputs["identity"] = keras.layers.Identity(name="identity")(model.get_layer(COSINE_LAYER).output)
    return keras.Model(model.inputs, outputs, name="facemtl_train")


class MultiTaskTask:
    """The identity + expression task of a recipe.

    Args:
        recipe: a validated `Recipe` (model, λ, weighting, optimizer, schedule).
        class_weights: optional `{task: per-class weights}` (FER2013's imbalance).
    """

    def __init__(self, recipe, class_weights=None):
        self.recipe = recipe
        self.class_weights = dict(class_weights or {})
        self.margins = {"identity": identity_margin(recipe.model)}

    def build_model(self, num_identities, num_expressions=None):
        """The recipe's full multi-task model (outputs `identity`, `expression`, `embedding`, and its attribute heads)."""
        kwargs = {} if num_expressions is None else {"num_expressions": num_expressions}
        return build_multitask(self.recipe.model, num_identities, attributes=attribute_tasks(self.recipe), **kwargs)

    training_view = staticmethod(training_view)

    def loss_weights(self, tasks):
        """`{task: λ}` from the recipe."""
        lambdas = {t.name: t.loss_weight for t in task_list(self.recipe)}
        return {t: lambdas[t] for t in tasks}

    def build_losses(self, tasks):
        """`{task: masked loss}`: each averaged over the samples that carry its label."""
        return {t: MaskedSparseCategoricalCrossentropy(self.class_weights.get(t), margin=self.margins.get(t),
                                                       name=f"{t}_loss") for t in tasks}

    def build_metrics(self, tasks):
        """`{task: [masked accuracy]}`."""
        return {t: [MaskedSparseCategoricalAccuracy(name="accuracy")] for t in tasks}

    def build_optimizer(self, steps_per_epoch, lr_factor=1.0, first_epoch=0):
        """The recipe's optimizer on the run's one schedule (`first_epoch`: a later phase goes on with it)."""
        return build_optimizer(self.recipe, steps_per_epoch, lr_factor, first_epoch)

    def compile(self, view, steps_per_epoch, lr_factor=1.0, first_epoch=0, previous=None):
        """Compiles the training view for `fit`.

        Args:
            view: from `training_view`.
            steps_per_epoch: for the learning-rate schedule.
            lr_factor: a later phase's learning-rate factor.
            first_epoch: the epoch this compile trains from.
            previous: the model the last phase trained (learned task weighting:
                its task weights carry over instead of starting again at zero).

        Returns:
            The model to `fit`: the view itself, or (learned task weighting) a
            wrapper that shares its weights.
        """
        tasks = list(view.output_names)
        optimizer = self.build_optimizer(steps_per_epoch, lr_factor, first_epoch)
        metrics, lambdas = self.build_metrics(tasks), self.loss_weights(tasks)
        jit = self.recipe.train.jit_compile
        if self.recipe.loss_weighting == "uncertainty":
            model = UncertaintyWeightedModel(view, lambdas, self.build_losses(tasks))
            if isinstance(previous, UncertaintyWeightedModel):
                model.log_variance.assign(previous.log_variance)
            model.compile(optimizer=optimizer, metrics=metrics, jit_compile=jit)
            return model
        view.compile(optimizer=optimizer, loss=self.build_losses(tasks), loss_weights=lambdas, metrics=metrics,
                     jit_compile=jit)
        return view

    def train_step(self, view, optimizer, x, y, accuracy=None):
        """One replica's step inside `strategy.run`: masked losses, λ, gradients; returns `{task: loss}`.

        Each task's summed loss is divided by the labelled count of the whole
        global batch (all-reduced), so the gradients' all-reduce (a sum) yields
        the global mean.
        """
        ctx = tf.distribute.get_replica_context()
        tasks = list(view.output_names)
        lambdas = self.loss_weights(tasks)
        with tf.GradientTape() as tape:
            out = view(x, training=True)
            losses = {}
            for t in tasks:
                s, c = masked_crossentropy_sum(y[t], out[t], self.class_weights.get(t), margin=self.margins.get(t))
                losses[t] = s / tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, c), 1e-12)
            total = tf.add_n([lambdas[t] * losses[t] for t in tasks])
            scaled = optimizer.scale_loss(total)  # a LossScaleOptimizer (mixed_float16) unscales in apply
        grads = tape.gradient(scaled, view.trainable_variables)
        optimizer.apply_gradients(zip(grads, view.trainable_variables))
        for t in tasks if accuracy else ():
            accuracy[t].update_state(y[t], out[t])
        return losses

    def evaluate(self, view, dataset):
        """Masked per-task loss and accuracy of `view` on `dataset`, plus the λ-weighted total (Keras' names)."""
        sums, counts, hits = {}, {}, {}
        for x, y in dataset:
            out = view(x, training=False)
            for t in view.output_names:
                s, c = masked_crossentropy_sum(y[t], out[t], margin=self.margins.get(t))
                labels = np.asarray(y[t]).reshape(-1)
                valid = labels != IGNORE_LABEL
                sums[t] = sums.get(t, 0.0) + float(s)
                counts[t] = counts.get(t, 0.0) + float(c)
                hits[t] = hits.get(t, 0.0) + float((np.argmax(out[t], -1)[valid] == labels[valid]).sum())
        logs = {}
        for t in sums:
            logs[f"{t}_loss"] = sums[t] / max(counts[t], 1e-12)
            logs[f"{t}_accuracy"] = hits[t] / max(counts[t], 1e-12)
        lambdas = self.loss_weights(list(sums))
        logs["loss"] = sum(lambdas[t] * logs[f"{t}_loss"] for t in sums)
        return logs
