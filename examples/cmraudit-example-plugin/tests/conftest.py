"""One torch thread, and cmraudit's contract-check fixtures (cmraudit_tiny_table, cmraudit_audit_context)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

pytest_plugins = ["cmraudit.testing"]
