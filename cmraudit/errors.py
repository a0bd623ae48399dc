"""Errors raised by cmraudit. Each names the file, plugin or setting at fault.

Only ``cmraudit.cli`` turns them into exit codes and one-line messages; library code raises, never prints.
"""
from __future__ import annotations


class CmrauditError(Exception):
    """Base class for every error a user can cause (bad data, bad config, bad plugin)."""

    exit_code = 1


class UsageError(CmrauditError):
    """A command line or config that cannot be understood (exit code 2)."""

    exit_code = 2


class DataError(CmrauditError):
    """A data set, file or patient that cannot be read correctly."""


class PluginError(CmrauditError):
    """A plugin that cannot be loaded, registers a clashing name, or breaks its contract."""


class ConfigError(UsageError):
    """A config file or option value that is invalid."""


class RunError(CmrauditError):
    """A run folder that is missing, unfinished or inconsistent."""
