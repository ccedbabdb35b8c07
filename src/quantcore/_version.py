"""quantcore's version, in one place: the package, the runtime report, the command
line and the build (pyproject.toml reads it) take it from here."""

__version__ = "0.1.0"
