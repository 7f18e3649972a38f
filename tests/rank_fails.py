"""torchrun entry point for tests/test_distributed.py: `resnetlab` where rank 1 raises at step 2.
(Not a test module: pytest collects test_*.py only.)"""
import os
import sys

from resnetlab.training import engine

if os.environ.get("RANK") == "1":
    _step = engine.Trainer.train_step

    def failing_step(self, x, y):
        if self.state.step >= 2:
            raise RuntimeError("rank 1 fails on purpose")
        return _step(self, x, y)

    engine.Trainer.train_step = failing_step

from resnetlab.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
