"""A small headless-Chromium driver for the report tests, on the Python standard library.

Chromium is started with --remote-debugging-pipe: the DevTools protocol (CDP) then runs
over file descriptors 3 (commands to the browser) and 4 (replies and events), each
message a JSON text ended by a NUL byte. No port is opened and no npm package is needed.

    with Browser() as b:
        page = b.new_page(width=1280, height=900)
        page.goto("file:///tmp/report.html")
        page.eval("document.title")
        page.click(100, 200)
        page.screenshot("shot.png")
        page.console_errors, page.requests

Installs Debian's chromium with apt-get when it is missing (the tests run as root on
the project's machines; elsewhere install it by hand).
"""
import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

CHROMIUM = os.environ.get("HEAPPROF_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars", "--remote-debugging-pipe"]


class BrowserError(Exception):
    pass


def _high_fd(fd):
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def ensure_chromium(timeout=900):
    """Returns the chromium path, installing the Debian package first if it is absent."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrowserError(f"{CHROMIUM} is missing and cannot be installed here "
                           f"(need root and apt-get): apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise BrowserError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserError(f"apt-get installed chromium but {CHROMIUM} is not there")
    return CHROMIUM


class Browser:
    def __init__(self, timeout=30.0):
        self.timeout = timeout
        self._exe = ensure_chromium()
        self._profile = tempfile.TemporaryDirectory(prefix="hp-chromium-")
        cmd_r, self._cmd_w = os.pipe()       # we write commands, chromium reads fd 3
        self._res_r, res_w = os.pipe()       # chromium writes fd 4, we read
        # The child's ends move above 9 first, so that "3<&N" never closes one of them.
        cmd_r, res_w = _high_fd(cmd_r), _high_fd(res_w)
        try:
            # bash (dash refuses fds above 9) moves the pipe ends to 3 and 4, where chromium expects them.
            self._proc = subprocess.Popen(
                ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{res_w} {cmd_r}<&- {res_w}>&-',
                 self._exe, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
                pass_fds=(cmd_r, res_w), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        finally:
            os.close(cmd_r)
            os.close(res_w)
        self._next_id = 0
        self._replies = {}
        self._events = queue.Queue()
        self._cv = threading.Condition()
        self._closed = False
        self._stderr = []
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._listeners = []
        self.call("Target.setDiscoverTargets", {"discover": False})

    # -------------------------------------------------------------- transport
    def _drain_stderr(self):
        for line in self._proc.stderr:
            self._stderr.append(line.decode(errors="replace"))
            del self._stderr[:-50]

    def _read_loop(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._res_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cv:
                    self._closed = True
                    self._cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cv:
                        self._replies[msg["id"]] = msg
                        self._cv.notify_all()
                else:
                    for fn in list(self._listeners):
                        fn(msg)

    def call(self, method, params=None, session=None, timeout=None):
        with self._cv:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            os.write(self._cmd_w, data)
        except OSError as e:
            raise BrowserError(f"chromium went away ({e}): {''.join(self._stderr)[-800:]}")
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cv:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise BrowserError(f"no reply to {method} "
                                       f"({'chromium exited' if self._closed else 'timeout'}): "
                                       f"{''.join(self._stderr)[-800:]}")
                self._cv.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def new_page(self, width=1280, height=900):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session, width, height)

    # -------------------------------------------------------------- lifetime
    def close(self):
        if self._proc.poll() is None:
            try:
                self.call("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait(timeout=5)
        for fd in (self._cmd_w, self._res_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    """One tab. Records console errors, uncaught exceptions and every network request."""

    def __init__(self, browser, session, width, height):
        self.b, self.session = browser, session
        self.console_errors = []
        self.requests = []
        self._loaded = threading.Event()
        browser._listeners.append(self._on_event)
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(domain + ".enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def _on_event(self, msg):
        if msg.get("sessionId") != self.session:
            return
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console_errors.append(d.get("exception", {}).get("description") or d.get("text"))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.console_errors.append(p["entry"].get("text"))
        elif m == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url"))
        elif m == "Page.loadEventFired":
            self._loaded.set()

    def call(self, method, params=None, timeout=None):
        return self.b.call(method, params, self.session, timeout)

    def goto(self, url):
        self._loaded.clear()
        r = self.call("Page.navigate", {"url": url})
        if r.get("errorText"):
            raise BrowserError(f"cannot open {url}: {r['errorText']}")
        if not self._loaded.wait(self.b.timeout):
            raise BrowserError(f"{url} did not finish loading in {self.b.timeout} s")

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"{expr!r} threw: "
                               f"{d.get('exception', {}).get('description') or d.get('text')}")
        return r["result"].get("value")

    def wait_for(self, expr, timeout=10.0):
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.eval(expr)
            if v:
                return v
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expr!r}")
            time.sleep(0.05)

    def mouse(self, kind, x, y, buttons=0, button="none"):
        self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": button,
                                               "buttons": buttons, "clickCount": 1})

    def click(self, x, y):
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, 1, "left")
        self.mouse("mouseReleased", x, y, 0, "left")

    def drag(self, x0, y0, x1, y1, steps=8):
        self.mouse("mouseMoved", x0, y0)
        self.mouse("mousePressed", x0, y0, 1, "left")
        for i in range(1, steps + 1):
            self.mouse("mouseMoved", x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps,
                       1, "left")
        self.mouse("mouseReleased", x1, y1, 0, "left")

    def screenshot(self, path, full_page=True):
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            m = self.call("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m.get("contentSize")
            params["clip"] = {"x": 0, "y": 0, "width": size["width"],
                              "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
