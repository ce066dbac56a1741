"""Data loaders: each turns a data source into tf.data pipelines.

tf.data runs on TensorFlow whatever the Keras backend; Keras `fit` on jax
and torch takes its batches as numpy.
"""
