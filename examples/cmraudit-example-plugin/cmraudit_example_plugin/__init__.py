"""An example third-party cmraudit plugin: one generator, one attack, one metric and one report section.

Installed, it is found through the ``cmraudit`` entry-point group; nothing in cmraudit itself names it.
"""
__version__ = "0.1.0"
