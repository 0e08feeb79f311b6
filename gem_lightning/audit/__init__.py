"""``python main.py audit``: know your data and your model before trusting a score.

One job a file: ``features`` (frozen ImageNet embeddings and perceptual hashes of every photo, one
decoding pass), ``label_issues`` (out-of-fold probabilities ranked by cleanlab), ``duplicates``
(near-duplicate clusters across classes and across train/test), ``galleries`` (the PNGs a person
looks at), ``outputs`` (``audit.md`` and the CSVs a person edits) and ``run`` (the whole audit).
Where a trained model looks (Grad-CAM) is :mod:`gem_lightning.reports.cam`.
"""
