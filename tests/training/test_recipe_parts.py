"""Recipe settings that change training without a training run: schedules, optimizers, label modes."""

import numpy as np
import pytest

from facemtl.config import load_recipe
from facemtl.data.pipeline import IGNORE_LABEL, load_splits
from facemtl.training.optimizers import build_optimizer, learning_rate
from tests.helpers import QUICKSTART, tiny_overrides


def _recipe(tmp_path, *overrides):
    return load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path) + list(overrides))


def test_step_schedule_divides_the_rate_every_step_epochs(tmp_path):
    recipe = _recipe(tmp_path, "schedule.name=step", "schedule.step_epochs=2", "schedule.step_factor=0.1",
                     "train.epochs=6", "optimizer.learning_rate=0.01")
    schedule = learning_rate(recipe, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 19, 20, 39, 40, 59)]
    np.testing.assert_allclose(rates, [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001], rtol=1e-5)


def test_warmup_then_constant(tmp_path):
    recipe = _recipe(tmp_path, "schedule.name=constant", "schedule.warmup_epochs=1", "train.epochs=3",
                     "optimizer.learning_rate=0.01")
    schedule = learning_rate(recipe, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose([float(schedule(s)) for s in (5, 10, 29)], [0.005, 0.01, 0.01], rtol=1e-5)


def test_a_later_phase_goes_on_with_the_runs_schedule_and_task_weights(tmp_path):
    """After unfreeze_at_epoch the new optimizer neither warms up again nor restarts the cosine."""
    import keras

    from facemtl.models import build_multitask
    from facemtl.training.task import MultiTaskTask, training_view

    recipe = _recipe(tmp_path, "schedule.name=cosine", "schedule.warmup_epochs=1", "train.epochs=10",
                     "optimizer.learning_rate=0.01", "train.unfreeze_at_epoch=4", "model.freeze_backbone=true",
                     "train.finetune_lr_factor=0.1", "loss_weighting=uncertainty")
    whole = learning_rate(recipe, steps_per_epoch=10)
    later = build_optimizer(recipe, steps_per_epoch=10, factor=0.1, first_epoch=4)._learning_rate
    # Its step 0 is the run's step 40, at a tenth of the rate; the run ends annealed to zero.
    np.testing.assert_allclose([float(later(s)) for s in (0, 30, 59)],
                               [0.1 * float(whole(s)) for s in (40, 70, 99)], rtol=1e-5)
    assert float(later(0)) > 0.0 and float(later(59)) < 1e-5
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(later))
    assert float(again(3)) == pytest.approx(float(later(3)))
    view = training_view(build_multitask(recipe.model, 3))
    task = MultiTaskTask(recipe)
    first = task.compile(view, 10)
    first.log_variance.assign([0.5, -0.25])
    second = task.compile(view, 10, 0.1, first_epoch=4, previous=first)
    np.testing.assert_allclose(second.log_variance.numpy(), [0.5, -0.25])


def test_adamw_carries_the_recipes_weight_decay(tmp_path):
    recipe = _recipe(tmp_path, "optimizer.name=adamw", "optimizer.weight_decay=0.05", "optimizer.clipnorm=1.0")
    optimizer = build_optimizer(recipe, steps_per_epoch=10)
    assert type(optimizer).__name__ == "AdamW"
    assert optimizer.weight_decay == pytest.approx(0.05) and optimizer.clipnorm == pytest.approx(1.0)
    plain = build_optimizer(_recipe(tmp_path, "optimizer.name=adam"), steps_per_epoch=10)
    assert type(plain).__name__ == "Adam" and not plain.weight_decay


def test_split_label_mode_keeps_one_task_label_per_training_sample(tmp_path):
    both = load_splits(_recipe(tmp_path), log=lambda *_: None)
    split = load_splits(_recipe(tmp_path, "data.synthetic.label_mode=split"), log=lambda *_: None)
    ids, exprs = split.train[1]["identity"], split.train[1]["expression"]
    labelled = (ids != IGNORE_LABEL).astype(int) + (exprs != IGNORE_LABEL).astype(int)
    assert (labelled == 1).all()  # exactly one task's label each
    assert 0.4 < (ids != IGNORE_LABEL).mean() < 0.6  # about half each way
    kept = ids != IGNORE_LABEL  # the labels kept are the true ones
    np.testing.assert_array_equal(ids[kept], both.train[1]["identity"][kept])
    np.testing.assert_array_equal(exprs[~kept], both.train[1]["expression"][~kept])
    for name in ("val", "test"):  # evaluation keeps both labels
        assert (getattr(split, name)[1]["identity"] != IGNORE_LABEL).all()
        assert (getattr(split, name)[1]["expression"] != IGNORE_LABEL).all()
