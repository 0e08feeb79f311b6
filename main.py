"""gem-lightning's command line: ``python main.py {fit,validate,test,predict} --config configs/<x>.yaml``.

Also ``prepare``, ``preview``, ``lr_find``, ``seeds``, ``export`` and ``serve`` (gem_lightning/commands/); ``python main.py --help`` lists all.
"""

import sys

if __name__ == "__main__":  # loader workers start by importing this file: it must stay cheap to import
    from gem_lightning.resilience.signals import listen_for_requeue_signal

    listen_for_requeue_signal()  # before the slow imports: under SLURM a SIGUSR1 may come at any time

    from gem_lightning.cli.app import main

    sys.exit(main())
