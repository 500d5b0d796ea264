"""`python -m steer_eval.cli` is the `steer-eval` command."""
import sys

from steer_eval.cli.main import main

sys.exit(main())
