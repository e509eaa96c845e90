"""Learned task weighting: homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018).

Instead of fixed λ, each task t gets a learned log-variance s_t and the total
loss becomes `sum_t λ_t * (exp(-s_t) * L_t + s_t / 2)`: a task whose loss stays
high (a harder or noisier task) is down-weighted, and s_t / 2 keeps the
weights from collapsing to zero. The recipe's λ still multiply each term.
"""

from __future__ import annotations

import keras
from keras import ops

from facemtl.training.losses import replicas_in_sync, scale_for_replicas


class UncertaintyWeightedModel(keras.Model):
    """Wraps a training view; its loss weights every task by a learned uncertainty.

    Args:
        view: the training view (dict outputs per task); its weights are shared.
        loss_weights: `{task: λ}` applied on top of the learned weighting.
        losses: `{task: masked loss}` (`MultiTaskTask.build_losses`).

    Example:
        >>> task = MultiTaskTask(recipe)
        >>> view = task.training_view(net)
        >>> model = UncertaintyWeightedModel(view, task.loss_weights(view.output_names),
        ...                                  task.build_losses(view.output_names))
        >>> model.compile(optimizer="adam", metrics={"expression": [MaskedSparseCategoricalAccuracy()]})
    """

    def __init__(self, view, loss_weights, losses, **kwargs):
        super().__init__(**kwargs)
        self.view = view
        self.tasks = list(view.output_names)
        self.task_loss_weights = dict(loss_weights)
        self.task_losses = dict(losses)
        self.log_variance = self.add_weight(shape=(len(self.tasks),), initializer="zeros", name="task_log_variance")
        self.task_loss_trackers = {t: keras.metrics.Mean(name=f"{t}_loss") for t in self.tasks}
        self.task_weight_trackers = {t: keras.metrics.Mean(name=f"{t}_weight") for t in self.tasks}
        self.built = True  # the wrapped view is built (saving and loading its weights need a built model)

    def call(self, inputs, training=None):
        return self.view(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total = 0.0
        replicas = replicas_in_sync()
        for i, t in enumerate(self.tasks):
            loss = self.task_losses[t](y[t], y_pred[t])  # already divided by the replicas in sync
            s = ops.cast(self.log_variance[i], "float32")
            total = total + self.task_loss_weights[t] * (ops.exp(-s) * loss + scale_for_replicas(0.5 * s))
            self.task_loss_trackers[t].update_state(loss * replicas)
            self.task_weight_trackers[t].update_state(ops.exp(-s))
        return total

    @property
    def metrics(self):
        return [*super().metrics, *self.task_loss_trackers.values(), *self.task_weight_trackers.values()]
