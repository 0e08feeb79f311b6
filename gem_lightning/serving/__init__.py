"""Serve a trained checkpoint over HTTP with LitServe: ``POST /predict``, ``GET /info``, ``GET /health``, ``GET /``.

* :mod:`~gem_lightning.serving.api`: the LitServe ``LitAPI``: decodes an upload exactly as ``predict``
  decodes a file, batches concurrent requests through the network, answers the top-k classes.
* :mod:`~gem_lightning.serving.gate`: what reaches the LitAPI: the API key, the body size limit,
  and the three accepted bodies (raw image, multipart ``file``, JSON base64) turned into one form.
* :mod:`~gem_lightning.serving.server`: the ``LitServer`` with the web page and JSON errors.
* :mod:`~gem_lightning.serving.supervision`: a dead model worker is restarted, its requests get a 503,
  and ``serve`` exits non-zero when workers keep dying.
"""
