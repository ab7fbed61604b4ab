"""Output files that match their extension (suite 'tools'): `plot` draws SVG with the
standard library and PNG/PDF through matplotlib, `flame` draws an SVG flame graph, `flow`
renders SVG/PNG/PDF through graphviz; an extension no format has, or an image whose renderer
is missing, is refused in one line naming the formats that work, with a non-zero exit and
nothing written (issue 13 items 7 and 8).

Figures are checked against the hand-built spike scenario (tools_scenarios.py).
"""
import contextlib
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

import tools_scenarios as sc

from heapprof import cli

PY = os.environ.get('HEAPPROF_PYTHON', sys.executable)
SCRIPT = os.path.join(os.path.dirname(PY), 'heapprof')
SVG = '{http://www.w3.org/2000/svg}'
MIB = 1024 * 1024


def heapprof(*args, env=None):
    return subprocess.run([SCRIPT] + list(args), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)


def have_matplotlib():
    return subprocess.run([PY, '-c', 'import matplotlib'], capture_output=True,
                          timeout=60).returncode == 0


def path_points(d):
    """(x, y) corners of an SVG path written as 'Mx y Hx Vy ...'."""
    x = y = None
    out = []
    for cmd, a, b in re.findall(r'([MHV])([-\d.]+)(?: ([-\d.]+))?', d):
        if cmd == 'M':
            x, y = float(a), float(b)
        elif cmd == 'H':
            x = float(a)
        else:
            y = float(a)
        out.append((x, y))
    return out


class OutputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-output-')
        cls.dir = cls.tmp.name
        cls.spike = sc.spike()
        cls.db = sc.write_db(os.path.join(cls.dir, 'spike.sqlite'), cls.spike)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def out(self, name):
        path = os.path.join(self.dir, name)
        if os.path.exists(path):
            os.unlink(path)
        return path

    def ok(self, *args, env=None):
        p = heapprof(*args, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn('Traceback', p.stderr)
        return p

    def refused(self, *args, pattern, env=None):
        p = heapprof(*args, env=env)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        lines = p.stderr.splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertRegex(lines[0], '^heapprof: ' + pattern)
        return p

    def assert_nothing_written(self, path):
        base = os.path.splitext(path)[0]
        self.assertEqual([f for f in os.listdir(self.dir)
                          if os.path.join(self.dir, f).startswith(base + '.')], [])

    # ------------------------------------------------------------ plot
    def test_plot_svg_is_drawn_without_matplotlib(self):
        out = self.out('heap.svg')
        self.ok('plot', '--db', self.db, '-o', out)
        svg = ET.parse(out).getroot()
        self.assertEqual(svg.tag, SVG + 'svg')
        paths = {p.find(SVG + 'title').text: p for p in svg.iter(SVG + 'path')}
        self.assertEqual(set(paths), {'total'})
        # The highest point of the step line sits at the peak, read off the y axis.
        ticks = [(float(t.get('y')) - 4, float(t.text)) for t in svg.iter(SVG + 'text')
                 if t.get('text-anchor') == 'end']
        (y0, v0), (y1, v1) = ticks[0], ticks[-1]
        top = min(y for _, y in path_points(paths['total'].get('d')))
        peak_mib = v0 + (top - y0) * (v1 - v0) / (y1 - y0)
        want = max(r[1] for r in self.spike.timeline_rows()) / MIB
        self.assertAlmostEqual(peak_mib, want, delta=0.02 * want)
        self.assertIn('estimated live heap (MiB)', ET.tostring(svg, encoding='unicode'))

    def test_plot_svg_with_a_site_has_a_fraction_panel(self):
        out = self.out('site.svg')
        self.ok('plot', '--db', self.db, '-o', out, '--site', 'spike.py:22')
        svg = ET.parse(out).getroot()
        titles = [p.find(SVG + 'title').text for p in svg.iter(SVG + 'path')]
        self.assertEqual(titles, ['total', 'spike.py:22', 'spike.py:22'])
        self.assertIn('fraction of the live heap', ET.tostring(svg, encoding='unicode'))

    def test_png_without_matplotlib_is_refused_and_writes_nothing(self):
        # Issue 13 item 7: it wrote heap.csv (over any such file) and exited 0. Run in
        # this process with matplotlib made unimportable, whatever is installed.
        out = self.out('nompl.png')
        err = io.StringIO()
        saved = sys.modules.get('matplotlib')
        sys.modules['matplotlib'] = None
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(['plot', '--db', self.db, '-o', out])
        finally:
            if saved is None:
                del sys.modules['matplotlib']
            else:
                sys.modules['matplotlib'] = saved
        self.assertEqual(code, 1)
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r'^heapprof: .*nompl\.png: PNG plots need matplotlib, '
                                   r'which .* cannot import .*; write \.svg or \.csv instead')
        self.assert_nothing_written(out)

    def test_png_and_pdf_through_matplotlib_when_it_is_importable(self):
        for name, magic in (('mpl.png', b'\x89PNG\r\n\x1a\n'), ('mpl.pdf', b'%PDF')):
            out = self.out(name)
            if have_matplotlib():
                self.ok('plot', '--db', self.db, '-o', out)
                with open(out, 'rb') as f:
                    self.assertEqual(f.read(len(magic)), magic)
            else:
                self.refused('plot', '--db', self.db, '-o', out,
                             pattern=r'.*%s: %s plots need matplotlib'
                                     % (re.escape(name), name[-3:].upper()))
                self.assert_nothing_written(out)

    def test_plot_refuses_an_extension_without_a_format(self):
        out = self.out('heap.gif')
        self.refused('plot', '--db', self.db, '-o', out,
                     pattern=r'.*heap\.gif: the plot format is chosen by the extension: \.svg '
                             r'or \.csv, or \.png or \.pdf \(with matplotlib\)$')
        self.assert_nothing_written(out)

    # ------------------------------------------------------------ flame
    def test_flame_svg_is_a_flame_graph(self):
        # Issue 13 item 8: -o x.svg wrote folded text into the .svg file.
        out = self.out('flame.svg')
        self.ok('flame', '--db', self.db, '--at', '1.5', '-o', out)
        svg = ET.parse(out).getroot()
        self.assertEqual(svg.tag, SVG + 'svg')
        boxes = {}
        for g in svg.iter(SVG + 'g'):
            name = g.find(SVG + 'title').text.split('\n')[0]
            boxes[name] = float(g.find(SVG + 'rect').get('width'))
        total = sum(self.spike.live_at(1.5).values())
        whole = boxes['all']
        spike = boxes['make_spike (%s:22)' % sc.SPIKE_FILE]
        self.assertAlmostEqual(spike / whole, 100 * 100 * 1024 / total, places=3)
        main = boxes['main (%s:40)' % sc.SPIKE_FILE]
        self.assertGreater(main, spike)          # the caller holds its callees
        self.assertEqual(len(svg.findall('.//' + SVG + 'script')), 0)

    def test_flame_svg_keeps_hostile_names_as_text(self):
        db = sc.write_db(os.path.join(self.dir, 'hostile.sqlite'), sc.spike())
        con = sqlite3.connect(db)
        con.execute("UPDATE frame SET function = '</text><script>alert(1)</script>' || "
                    "char(1) WHERE function = 'make_spike'")
        con.commit()
        con.close()
        out = self.out('hostile.svg')
        self.ok('flame', '--db', db, '--at', '1.5', '-o', out)
        svg = ET.parse(out).getroot()          # well-formed despite the control character
        self.assertEqual(len(svg.findall('.//' + SVG + 'script')), 0)
        names = [g.find(SVG + 'title').text for g in svg.iter(SVG + 'g')]
        self.assertEqual(len([n for n in names if n.startswith(
            '</text><script>alert(1)</script>\ufffd (%s:22)\n' % sc.SPIKE_FILE)]), 1, names)

    def test_flame_refuses_an_extension_without_a_format(self):
        out = self.out('flame.png')
        self.refused('flame', '--db', self.db, '-o', out,
                     pattern=r'.*flame\.png: flame writes \.svg \(a flame graph\), \.folded or '
                             r'\.txt \(folded stacks\) or \.json \(speedscope\); or choose with '
                             r'--format$')
        self.assert_nothing_written(out)
        # --format chooses whatever the extension.
        self.ok('flame', '--db', self.db, '--format', 'svg', '-o', out)
        self.assertIsNotNone(ET.parse(out).getroot())

    # ------------------------------------------------------------ flow
    def test_flow_images_are_rendered_by_graphviz(self):
        self.assertIsNotNone(shutil.which('dot'), 'graphviz `dot` is needed (./setup.sh test '
                             'installs it); without it, see the test below')
        for name, magic in (('flow.svg', b'<?xml'), ('flow.png', b'\x89PNG'),
                            ('flow.pdf', b'%PDF')):
            out = self.out(name)
            p = self.ok('flow', '--db', self.db, '--at', '1.5', '-o', out)
            self.assertIn('wrote %s' % out, p.stdout)
            with open(out, 'rb') as f:
                head = f.read(len(magic))
            self.assertEqual(head, magic, name)
        with open(os.path.join(self.dir, 'flow.svg'), encoding='utf-8') as f:
            self.assertIn('make_spike', f.read())
        self.assertFalse(os.path.exists(os.path.join(self.dir, 'flow.dot')))

    def test_flow_image_without_graphviz_is_refused(self):
        empty = os.path.join(self.dir, 'empty-bin')
        os.makedirs(empty, exist_ok=True)
        env = dict(os.environ, PATH=empty)      # no `dot` on it
        out = self.out('nodot.png')
        self.refused('flow', '--db', self.db, '-o', out, env=env,
                     pattern=r'.*nodot\.png: rendering PNG needs graphviz `dot`, which is not '
                             r'installed \(Debian: graphviz\); write \.dot instead$')
        self.assert_nothing_written(out)
        # The graphviz text needs no graphviz.
        out = self.out('nodot.dot')
        p = self.ok('flow', '--db', self.db, '-o', out, env=env)
        self.assertIn('graphviz `dot` is not installed', p.stdout)
        with open(out) as f:
            self.assertTrue(f.read().startswith('digraph heapprof_flow {'))

    def test_flow_refuses_an_extension_without_a_format(self):
        out = self.out('graph.txt')
        self.refused('flow', '--db', self.db, '-o', out,
                     pattern=r'.*graph\.txt: flow writes \.dot or \.gv \(graphviz text\), or '
                             r'\.svg, \.png or \.pdf \(rendered by graphviz `dot`\)$')
        self.assert_nothing_written(out)


if __name__ == '__main__':
    unittest.main()
