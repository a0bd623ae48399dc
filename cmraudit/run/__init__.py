"""Running an audit: one run folder, its stages (train → sample → audit → report) and its results.json.

    from cmraudit.run import open_run
    run = open_run("audit-dir", overrides={"data": "phantom:20", "profile": "smoke"})
    run.run()
"""
from .audit_run import AuditRun, open_run

__all__ = ["AuditRun", "open_run"]
