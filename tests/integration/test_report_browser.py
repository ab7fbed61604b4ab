"""heapprof report in a real headless browser (Debian's chromium over the DevTools pipe,
see report_browser.py): it loads with no console errors and no network requests, the
plot and the flame graph render, clicking a later time changes the flame graph,
dragging a range ranks growth, the leaks tab names the leaking site, and hover, search,
zoom and sorting work. Screenshots are kept in tests/artifacts/ (git-ignored).
"""
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_browser  # noqa: E402
from test_report import PYTHON, SOURCE_ROOT, make_db  # noqa: E402

ARTIFACTS = os.path.join(SOURCE_ROOT, "tests", "artifacts")


class PageHelpers:
    """Shared by the test classes: each sets cls.tmp, cls.browser and self.url."""

    @classmethod
    def tearDownClass(cls):
        try:
            cls.browser.close()
        finally:
            cls.tmp.cleanup()

    def load(self):
        page = self.browser.new_page(width=1280, height=900)
        page.goto(self.url)
        page.wait_for("window.hpReport && hpReport.flameSummary().length > 0")
        return page

    def plot_xy(self, page, t):
        """Viewport coordinates of time t on the plot, halfway up."""
        return page.eval(f"""(() => {{
            const u = hpReport.plot(), r = u.over.getBoundingClientRect();
            return [r.left + u.valToPos({t}, 'x'), r.top + r.height / 2]; }})()""")

    def flame_names(self, page):
        return {name for _, name, _ in page.eval("hpReport.flameSummary()")}

    def canvas_colours(self, page, selector):
        """Distinct colours on a canvas (sampled): a blank or one-colour canvas gives <= 1."""
        return page.eval(f"""(() => {{
            const c = document.querySelector({selector!r});
            if (!c || !c.width || !c.height) return 0;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4 * 7) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2] | d[i+3] << 24);
            return seen.size; }})()""")

    def screenshot(self, page, name):
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(os.path.join(ARTIFACTS, name))


class ReportInBrowser(PageHelpers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hp-report-browser-")
        try:
            db = os.path.join(cls.tmp.name, "prof.sqlite")
            make_db(db)
            cls.html = os.path.join(cls.tmp.name, "report.html")
            r = subprocess.run([PYTHON, "-m", "heapprof.report", "--db", db, "-o", cls.html],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise AssertionError(f"heapprof report failed: {r.stderr}")
            cls.url = "file://" + cls.html
            cls.browser = report_browser.Browser()
        except BaseException:
            cls.tmp.cleanup()
            raise

    def test_loads_without_console_errors_or_network(self):
        page = self.load()
        self.assertEqual(page.console_errors, [])
        self.assertEqual(page.requests, [self.url])

    def test_plot_and_flame_graph_render(self):
        page = self.load()
        self.assertGreater(self.canvas_colours(page, "#timeline canvas"), 5)
        self.assertGreater(self.canvas_colours(page, "#flame"), 5)
        # The page opens on the peak: the spike's index dominates it.
        self.assertIn("(peak)", page.eval("document.getElementById('selection').textContent"))
        names = self.flame_names(page)
        self.assertTrue({"<module>", "main", "build_index", "remember"} <= names, names)
        self.screenshot(page, "report-peak.png")
        self.assertEqual(page.console_errors, [])

    def test_clicking_a_later_time_changes_the_flame_graph(self):
        page = self.load()
        before = page.eval("document.getElementById('flame').toDataURL()")
        self.assertIn("build_index", self.flame_names(page))
        x, y = self.plot_xy(page, 8.0)
        page.click(x, y)
        page.wait_for("Math.abs(hpReport.state.moment.t - 8.0) < 0.1")
        names = self.flame_names(page)
        # At 8 s the index is long gone and the leak has grown.
        self.assertNotIn("build_index", names)
        self.assertIn("remember", names)
        self.assertNotEqual(page.eval("document.getElementById('flame').toDataURL()"), before)
        sel = page.eval("document.getElementById('selection').textContent")
        m = re.search(r"t = ([0-9.]+) s", sel)
        self.assertTrue(m, sel)
        self.assertAlmostEqual(float(m.group(1)), 8.0, delta=0.06)
        self.screenshot(page, "report-8s.png")
        # The arrow keys step to the neighbouring kept moments.
        t = page.eval("hpReport.state.moment.t")
        page.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "ArrowRight",
                                             "code": "ArrowRight", "windowsVirtualKeyCode": 39})
        page.wait_for(f"hpReport.state.moment.t > {t}")
        self.assertLess(page.eval("hpReport.state.moment.t") - t, 0.1)
        self.assertEqual(page.console_errors, [])

    def test_dragging_a_range_ranks_growth(self):
        page = self.load()
        x0, y = self.plot_xy(page, 4.0)
        x1, _ = self.plot_xy(page, 9.0)
        page.drag(x0, y, x1, y)
        page.wait_for("document.getElementById('tab-growth').classList.contains('active')")
        first = page.eval("document.querySelector('#growth tbody tr').innerText")
        self.assertIn("remember", first)
        self.assertIn("cache.py:42", first)
        self.assertIn("+", first)
        self.screenshot(page, "report-growth.png")
        self.assertEqual(page.console_errors, [])

    def test_leaks_tab_names_the_leaking_site(self):
        page = self.load()
        r = page.eval("""(() => { const b = document.querySelector('button[data-tab=leaks]')
                          .getBoundingClientRect(); return [b.left + b.width / 2, b.top + b.height / 2]; })()""")
        page.click(*r)
        page.wait_for("document.getElementById('tab-leaks').classList.contains('active')")
        rows = page.eval("Array.from(document.querySelectorAll('#leaks tbody tr')).map(r => r.innerText)")
        self.assertEqual(len(rows), 1)
        self.assertIn("remember", rows[0])
        self.assertIn("cache.py:42", rows[0])
        self.assertIn("7.91 MiB", rows[0])              # 81 x 100 KiB
        self.screenshot(page, "report-leaks.png")

    def test_hover_search_zoom_and_sorting(self):
        page = self.load()
        box = page.eval("hpReport.flameBox('build_index')")
        self.assertIsNotNone(box)
        page.mouse("mouseMoved", box[0] + box[2] / 2, box[1] + box[3] / 2)
        page.wait_for("!document.getElementById('tooltip').hidden")
        tip = page.eval("document.getElementById('tooltip').innerText")
        self.assertIn("build_index", tip)
        self.assertIn("indexer.py:30", tip)
        self.assertIn("MiB", tip)
        self.assertIn("% of the total", tip)

        page.eval("document.getElementById('search').focus()")
        page.call("Input.insertText", {"text": "remember"})
        info = page.wait_for("document.getElementById('search-info').textContent")
        self.assertIn("matched", info)

        main = page.eval("hpReport.flameBox('main')")
        page.click(main[0] + 5, main[1] + main[3] / 2)
        page.wait_for("!document.getElementById('unzoom').disabled")
        self.assertIn("zoomed into main", page.eval("document.getElementById('flame-caption').textContent"))

        # Top sites: sorting by cumulative puts the outermost frame first.
        page.eval("document.querySelector('button[data-tab=sites]').click()")
        page.eval("""Array.from(document.querySelectorAll('#sites th'))
                     .find(th => th.textContent === 'Cumulative').click()""")
        first = page.eval("document.querySelector('#sites tbody tr td').innerText")
        self.assertIn(first, ("<module>", "main"))
        # The hostile file name of `main` shows as text, loads nothing and runs nothing.
        self.assertIn("onerror", page.eval("document.getElementById('sites').innerText"))
        self.assertEqual(page.eval("document.images.length"), 0)
        self.assertEqual(page.requests, [self.url])
        self.assertEqual(page.console_errors, [])


def heapprofd():
    return os.environ.get("HEAPPROFD") or os.path.join(
        os.environ.get("HEAPPROF_BUILD_ROOT", ""), "daemon", "heapprofd")


def record(tmp, example, *args):
    """Profiles examples/<example> with a real heapprofd; returns (db, program stdout)."""
    db = os.path.join(tmp, example.replace(".py", ".sqlite"))
    env = dict(os.environ, HEAPPROFD=heapprofd())
    r = subprocess.run([PYTHON, "-m", "heapprof", "run", "-o", db,
                        os.path.join(SOURCE_ROOT, "examples", example), *args],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp)
    if r.returncode != 0 or not os.path.exists(db):
        raise AssertionError(f"recording {example} failed ({r.returncode}): {r.stderr[-2000:]}")
    return db, r.stdout


def marked_line(example, mark):
    with open(os.path.join(SOURCE_ROOT, "examples", example), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if "# " + mark in line:
                return n
    raise AssertionError(f"no {mark} in examples/{example}")


class RecordedExamplesInBrowser(PageHelpers, unittest.TestCase):
    """The same page for real recordings: examples/spike.py and examples/leak.py profiled
    by heapprofd through `python -m heapprof run`."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hp-report-rec-")
        try:
            spike_db, out = record(cls.tmp.name, "spike.py", "20")
            m = re.search(r"spike_ns (\d+) (\d+)", out)
            if not m:
                raise AssertionError(f"spike.py printed no spike_ns line: {out!r}")
            con = sqlite3.connect(spike_db)
            started = con.execute("SELECT started_ns FROM sessions").fetchone()[0]
            con.close()
            cls.spike = ((int(m.group(1)) - started) / 1e9, (int(m.group(2)) - started) / 1e9)
            leak_db, _ = record(cls.tmp.name, "leak.py", "150")
            cls.urls = {}
            for name, db in (("spike", spike_db), ("leak", leak_db)):
                html = os.path.join(cls.tmp.name, name + ".html")
                r = subprocess.run([PYTHON, "-m", "heapprof.report", "--db", db, "-o", html],
                                   capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise AssertionError(f"heapprof report failed: {r.stderr}")
                cls.urls[name] = "file://" + html
            cls.browser = report_browser.Browser()
        except BaseException:
            cls.tmp.cleanup()
            raise

    def open(self, name):
        self.url = self.urls[name]
        return self.load()

    def test_spike_peak_and_a_later_time(self):
        page = self.open("spike")
        self.assertEqual(page.console_errors, [])
        self.assertEqual(page.requests, [self.url])
        self.assertGreater(self.canvas_colours(page, "#timeline canvas"), 5)
        self.assertGreater(self.canvas_colours(page, "#flame"), 3)
        # The page opens on the peak, which lies inside the spike, held by make_spike.
        t_peak = page.eval("hpReport.state.moment.t")
        start, release = self.spike
        self.assertGreaterEqual(t_peak, start - 0.01)
        self.assertLessEqual(t_peak, release + 0.01)
        self.assertIn("make_spike", self.flame_names(page))
        self.screenshot(page, "report-recorded-spike.png")
        before = page.eval("document.getElementById('flame').toDataURL()")
        x, y = self.plot_xy(page, release + 0.15)
        page.click(x, y)
        page.wait_for(f"hpReport.state.moment.t > {release}")
        self.assertNotIn("make_spike", self.flame_names(page))
        self.assertNotEqual(page.eval("document.getElementById('flame').toDataURL()"), before)
        self.assertEqual(page.console_errors, [])

    def test_leaks_tab_names_the_leaking_line(self):
        page = self.open("leak")
        page.eval("document.querySelector('button[data-tab=leaks]').click()")
        first = page.eval("document.querySelector('#leaks tbody tr').innerText")
        self.assertIn("handle_request", first)
        self.assertIn("leak.py:%d" % marked_line("leak.py", "LEAK_LINE"), first)
        self.screenshot(page, "report-recorded-leak.png")
        self.assertEqual(page.console_errors, [])


if __name__ == "__main__":
    unittest.main()
