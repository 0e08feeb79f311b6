"""Experiment trackers: MLflow's tracking server as a place runs are logged to and checkpoints are read back from.

* :mod:`~gem_lightning.tracking.server`: whether the server answers, asked so that the answer comes in
  seconds, and its failures in a few words.
* :mod:`~gem_lightning.tracking.logger`: :class:`~gem_lightning.tracking.logger.ResilientMLFlowLogger`,
  Lightning's ``MLFlowLogger`` that outlives its server (``configs/mlflow.yaml``).
* :mod:`~gem_lightning.tracking.checkpoint_uri`: ``runs:/...`` and ``models:/...`` checkpoints as local files.

TensorBoard needs nothing here: Lightning's ``TensorBoardLogger`` writes local files
(``configs/tensorboard.yaml``). The files a run writes into its folder reach both trackers through
:class:`gem_lightning.training.callbacks.trackers.TrackerArtifacts`. ``mlflow`` is optional
(``pip install 'gem-lightning[mlflow]'``): nothing here imports it before it is needed.
"""
