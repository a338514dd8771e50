"""Errors a user can cause and fix. The CLI prints these without a traceback."""


class HwcompError(Exception):
    """Base class: a clear message about bad input (model, target, artifact, data)."""


class UnsupportedOpError(HwcompError):
    """The model uses an operator the importer cannot translate."""


class ArtifactError(HwcompError):
    """An artifact directory is missing files, corrupt, edited or not an hwcomp artifact."""


class InputError(HwcompError):
    """Run-time inputs do not match the compiled model's names, shapes or dtypes."""
