"""gem-lightning's command line: ``python main.py {fit,validate,test,predict} --config configs/<x>.yaml``.

Also ``prepare``, ``preview``, ``lr_find``, ``seeds``, ``export`` and ``serve`` (gem_lightning/commands/); ``python main.py --help`` lists all.
"""

import sys

from gem_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
