from bnjax.cli import run

run()
