#!/usr/bin/env python3
"""Render Status > wgagent in headless Chromium and save a screenshot.

The page is served on 127.0.0.1 (an ephemeral port): the LuCI stand-in
(tests/luci/standin, loaded as it is in the node tests) on the browser's own DOM,
the package's files as /luci-static/resources, and a recorded `status` answer
(tests/data/luci/status_s1_op2.json, its "updated" moved to the moment of the
render) as what `ubus call wgagent status` answers, to a session holding
luci-app-wgagent's ACL. The stylesheet is a small one
of this repository in the manner of LuCI's bootstrap theme, not LuCI's own.

Chromium runs with a fresh profile, no sandbox (as root), no GPU, none of its
background traffic, and every host name but 127.0.0.1 unresolvable; first with
--dump-dom to check that the view rendered (the script fails otherwise), then
with --screenshot. Each run is its own process group, ended by its id if it
outlives its timeout.

    python3 tests/luci/screenshot.py [OUT.png]   (default docs/luci-status.png)
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESOURCES = os.path.join(ROOT, "openwrt-package", "luci-app-wgagent", "htdocs", "luci-static", "resources")
STATUS = os.path.join(ROOT, "tests", "data", "luci", "status_s1_op2.json")
ACL = os.path.join(ROOT, "openwrt-package", "luci-app-wgagent", "root", "usr", "share", "rpcd", "acl.d",
                   "luci-app-wgagent.json")
WIDTH, HEIGHT = 1000, 790
MODULES = ["core.js", "validation.js", "ui.js", "uci.js", "form.js", "ubus.js", "index.js"]

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>wgagent - LuCI</title>
<link rel="stylesheet" href="/page.css"></head>
<body>
<header><span class="brand">op2</span><nav><a class="active">Status</a><a>System</a><a>Services</a>
<a>Network</a><a>Logout</a></nav></header>
<div id="maincontent" class="container"><div id="view"></div></div>
<footer>The LuCI stand-in of tests/luci with the status answer recorded on S1's op2 (tests/data/luci)</footer>
<script src="/boot.js"></script>
</body></html>
"""

CSS = """
body { margin: 0; font: 13px/1.45 "Liberation Sans", Arial, sans-serif; color: #404040; background: #fff; }
header { background: #1f2327; color: #eee; padding: 9px 20px; display: flex; gap: 24px; align-items: center; }
header .brand { font-size: 18px; font-weight: bold; color: #fff; }
header nav a { color: #bbb; margin-right: 16px; }
header nav a.active { color: #fff; border-bottom: 2px solid #5e9ed6; padding-bottom: 2px; }
.container { padding: 6px 20px 10px; }
h2 { font-size: 20px; margin: 8px 0 4px; color: #222; }
h3 { font-size: 15px; margin: 14px 0 6px; color: #333; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.cbi-map-descr { color: #666; margin-bottom: 8px; }
.cbi-section { margin: 6px 0 10px; }
table.table { width: 100%; border-collapse: collapse; }
.table th { text-align: left; background: #f3f3f3; border-bottom: 1px solid #ccc; padding: 4px 8px; font-weight: bold; }
.table td { border-bottom: 1px solid #e6e6e6; padding: 4px 8px; vertical-align: top; }
tr[data-state="up"] td:nth-child(2), tr[data-state="ok"] td:nth-child(3) { color: #2a7a2a; font-weight: bold; }
tr[data-state="down"] td:nth-child(2), tr[data-state="missing"] td:nth-child(3) { color: #a33; }
tr[data-state="idle"] td:nth-child(2), tr[data-state="moved"] td:nth-child(2) { color: #a66d00; }
.alert-message { background: #fcf4dc; border: 1px solid #eed48a; padding: 6px 10px; margin: 6px 0; border-radius: 3px; }
.alert-message p { margin: 2px 0; }
[data-daemon] { display: flex; justify-content: space-between; align-items: center; }
[data-daemon] p { margin: 0; }
.cbi-button { font: inherit; padding: 3px 10px; border: 1px solid #aaa; border-radius: 3px; background: #f6f6f6; }
.cbi-button-apply { background: #4a8ccf; border-color: #3a75b0; color: #fff; }
em { color: #888; }
footer { color: #999; font-size: 11px; padding: 4px 20px 10px; }
"""

# the CommonJS shape of the stand-in's files, in the browser; then the view
BOOT = """(function() {
  var sources = {}, cache = {};
  function load(name) {
    if (cache[name]) return cache[name].exports;
    var module = { exports: {} };
    cache[name] = module;
    new Function('module', 'exports', 'require', sources[name])(module, module.exports, function(p) {
      return load(p.replace(/^\\.\\//, ''));
    });
    return module.exports;
  }
  var names = %(modules)s;
  Promise.all(names.map(function(n) {
    return fetch('/standin/' + n).then(function(r) { return r.text(); }).then(function(t) { sources[n] = t; });
  })).then(function() {
    return Promise.all([ fetch('/status.json'), fetch('/acl.json') ]);
  }).then(function(rs) { return Promise.all(rs.map(function(r) { return r.json(); })); }).then(function(got) {
    var status = got[0];
    var rt = load('index.js').createLuCI({
      window: window, document: document, timers: true, acl: [ got[1] ],
      readResource: function(p) { return fetch('/luci-static/resources/' + p).then(function(r) { return r.text(); }); },
      objects: { wgagent: {
        status: function() { return status; },
        reconcile: function() { return null; },
        reload: function() { return { taken: true, error: null }; }
      } }
    });
    return rt.L.require('view.wgagent.status').then(function(view) { return view.rendered; }).then(function() {
      document.body.setAttribute('data-rendered', 'yes');
    });
  }).catch(function(e) {
    document.body.setAttribute('data-rendered', 'error: ' + e);
  });
})();
"""


class Handler(http.server.SimpleHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        body, ctype = None, "application/javascript"
        if path in self.routes:
            body, ctype = self.routes[path]
        elif path.startswith("/standin/") and os.path.basename(path) in MODULES:
            body = open(os.path.join(HERE, "standin", os.path.basename(path)), "rb").read()
        elif path.startswith("/luci-static/resources/"):
            rel = os.path.normpath(path[len("/luci-static/resources/"):])
            full = os.path.join(RESOURCES, rel)
            if not rel.startswith("..") and os.path.isfile(full):
                body = open(full, "rb").read()
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("needs chromium (apt-get install chromium)")


def run_chromium(url: str, *args: str, timeout: float = 60) -> str:
    with tempfile.TemporaryDirectory() as profile:
        argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
                "--disable-extensions", "--no-default-browser-check", "--metrics-recording-only", "--mute-audio",
                "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}", "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=3000", *args, url]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=profile,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helpers: its own group
            proc.communicate()
            raise SystemExit(f"chromium did not finish within {timeout}s")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers left behind by the finished browser
            except ProcessLookupError:
                pass
        if proc.returncode != 0:
            raise SystemExit(f"chromium exited {proc.returncode}:\n{err[-3000:]}")
        return out


def main(out: str) -> int:
    status = json.load(open(STATUS))
    status["daemon"]["updated"] = int(time.time()) - 2
    Handler.routes = {
        "/": (PAGE.encode(), "text/html; charset=utf-8"),
        "/page.css": (CSS.encode(), "text/css"),
        "/boot.js": ((BOOT % {"modules": json.dumps(MODULES)}).encode(), "application/javascript"),
        "/status.json": (json.dumps(status).encode(), "application/json"),
        "/acl.json": (open(ACL, "rb").read(), "application/json"),  # the session holds the app's ACL
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        dom = run_chromium(url, "--dump-dom")
        if 'data-rendered="yes"' not in dom:
            print(dom[-3000:], file=sys.stderr)
            raise SystemExit("the status view did not render in chromium")
        for text in ("Interface wg0 (uapi, table main)", "phone (", "down: no handshake yet", "Return paths",
                     "wgagent_zone_pool", "running (pid"):
            if text not in dom:
                raise SystemExit(f"rendered page lacks {text!r}")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        run_chromium(url, f"--screenshot={os.path.abspath(out)}")
    finally:
        server.shutdown()
        server.server_close()
    print(f"{out}: {os.path.getsize(out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "luci-status.png")))
