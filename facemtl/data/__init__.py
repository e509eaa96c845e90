"""Datasets: generated faces, and the pipeline that turns them into tf.data streams."""
