"""``python -m lstm_infer``: the lstm-infer command line."""

import sys

from lstm_infer.cli import main

sys.exit(main())
