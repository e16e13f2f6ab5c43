"""API errors: each carries the HTTP-like code the micro error headers and body use."""

from __future__ import annotations


class HvmeshError(Exception):
    """An error an API caller sees as {"error": {"code", "message"}}."""

    code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(HvmeshError):
    code = 400


class Forbidden(HvmeshError):
    code = 403


class NotFound(HvmeshError):
    code = 404


class Conflict(HvmeshError):
    code = 409


class TooLarge(HvmeshError):
    code = 413


class ServiceUnavailable(HvmeshError):
    code = 503


ERRORS_BY_CODE: dict[int, type[HvmeshError]] = {
    cls.code: cls
    for cls in (BadRequest, Forbidden, NotFound, Conflict, TooLarge, ServiceUnavailable)
}


def from_code(code: int, message: str) -> HvmeshError:
    """Rebuild the error a service answered with, on the caller's side."""
    err = ERRORS_BY_CODE.get(code, HvmeshError)(message)
    err.code = code
    return err


class PluginFailed(HvmeshError):
    """A plugin (a filter, weigher or scheduler driver) raised while serving one request.

    Its message names the plugin and what registered it, e.g. "filter NumInstancesFilter
    (plugin my-filters, entry point myfilters = my_filters.plugin) raised KeyError: 'oops'".
    It is a 500, told apart from ServiceUnavailable (503, nobody answered): a request a
    plugin fails would fail again, so the caller gives up at once.
    """

    code = 500
