"""Offline data tools, apart from the loaders: the train/test split of a collection and the dataset generator."""
