"""The double's status texts and one call over its socket: all the stand-in CLI
imports, so that each `ubus` process starts fast."""

import json
import socket

STATUS_TEXT = {0: "Success", 1: "Invalid command", 2: "Invalid argument", 3: "Method not found",
               4: "Not found", 5: "No response", 6: "Permission denied", 7: "Request timed out",
               8: "Operation not supported", 9: "Unknown error", 10: "Connection failed",
               11: "Out of memory", 12: "Parsing message data failed", 13: "System error"}


def request(path: str, obj: str, method: str, args) -> dict:
    """One call over the double's socket on a fresh connection (the CLI's way)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(json.dumps({"object": obj, "method": method, "args": args}).encode() + b"\n")
        with s.makefile("rb") as f:
            return json.loads(f.readline())
