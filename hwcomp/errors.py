"""Errors a user can cause and fix. The CLI prints these without a traceback."""


class HwcompError(Exception):
    """Base class: a clear message about bad input (model, target, artifact, data)."""


class UnsupportedOpError(HwcompError):
    """The model uses an operator the importer cannot translate."""


class ArtifactError(HwcompError):
    """An artifact directory is missing files, corrupt, edited or not an hwcomp artifact."""


class InputError(HwcompError):
    """Run-time inputs do not match the compiled model's names, shapes or dtypes."""


class HwcompWarning(UserWarning):
    """Something the user asked for did nothing (a skip pattern naming no layer, ...): the CLI
    prints it as one ``hwcomp: warning:`` line."""


def error_line(e: BaseException | str, with_type: bool = False, limit: int | None = None) -> str:
    """One informative line of ``e`` for a one-line message. A multi-line error (TVM's C++ errors
    put a traceback first and the reason last) gives its last line naming an error or a failed
    check; any other its first line. ``with_type`` prefixes the exception's class name; ``limit``
    cuts the line (None: whole, so a long file path is never cut off). A string (an error message
    TVM hands back as text) is read the same way."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) > 1:
        msg = next((ln for ln in reversed(lines) if "Error" in ln or "Check failed" in ln), lines[0])
    else:
        msg = lines[0] if lines else ""
    msg = msg.rstrip(":")[:limit]  # [:None]: whole
    if isinstance(e, str):
        return msg or "(no message)"
    if with_type or not msg:
        return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg
