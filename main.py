"""gem-lightning's command line: ``python main.py {fit,validate,test,predict} --config configs/<x>.yaml``."""

from gem_lightning.cli import cli_main

if __name__ == "__main__":
    cli_main()
