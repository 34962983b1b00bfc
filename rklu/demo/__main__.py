"""``python -m rklu.demo ...`` = ``rklu demo ...``."""
import sys

from rklu.cli import main

sys.exit(main(["demo", *sys.argv[1:]]))
