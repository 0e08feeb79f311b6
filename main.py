"""gem-lightning's command line: ``python main.py {fit,validate,test,predict} --config configs/<x>.yaml``.

Also ``prepare``, ``preview``, ``lr_find`` and ``export``; ``python main.py --help`` lists all.
"""

import sys

from gem_lightning.cli import cli_main

if __name__ == "__main__":
    result = cli_main()
    sys.exit(result if isinstance(result, int) else 0)
