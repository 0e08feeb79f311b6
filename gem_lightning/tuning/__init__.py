"""Searching ``fit`` settings with Optuna (``python main.py tune``), on one machine or many.

One job a module, from the bottom up:

* ``space``: the search space file (setting -> distribution), read and checked;
* ``trial_command``: the space checked against ``fit``'s own parser, and each trial's ``fit`` options;
* ``stopping``: a worker's stop request (SIGTERM, Ctrl-C);
* ``reporting``: the Lightning callback that reports the metric at each validation and prunes;
* ``objective``: one trial, a ``fit`` through the command line in the trial's folder;
* ``storage``: SQLite or PostgreSQL, with Optuna's heartbeat and retries of dead workers' trials;
* ``study``: the study made or loaded, refused when it searches something else; sampler and pruner;
* ``worker``: the trial loop of one worker; ``workers``: several worker processes on one machine;
* ``outputs``: ``best.yaml``, ``trials.csv`` and the plots.
"""
