"""gem-lightning's command line: ``python main.py {fit,validate,test,predict} --config configs/<x>.yaml`` (LightningCLI's).

Also ``prepare``, ``optimize``, ``preview``, ``lr_find``, ``seeds``, ``tune``, ``ensemble``, ``calibrate``, ``export``, ``serve`` and
``audit``, one module each in gem_lightning/cli/commands/; ``python main.py --help`` describes them all.
"""

import sys

if __name__ == "__main__":  # loader workers start by importing this file: it must stay cheap to import
    from gem_lightning.resilience.signals import listen_for_requeue_signal

    listen_for_requeue_signal()  # before the slow imports: under SLURM a SIGUSR1 may come at any time

    from gem_lightning.cli.app import main

    sys.exit(main())
