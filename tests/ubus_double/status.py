"""The ubus status codes the double's objects answer with (libubus.h's enum
ubus_msg_status), and the exception that carries one to the server."""

from .wire import STATUS_TEXT

OK, INVALID_COMMAND, INVALID_ARGUMENT, METHOD_NOT_FOUND, NOT_FOUND = 0, 1, 2, 3, 4
PERMISSION_DENIED, UNKNOWN_ERROR = 6, 9


class UbusStatus(Exception):
    def __init__(self, status: int):
        super().__init__(STATUS_TEXT[status])
        self.status = status
