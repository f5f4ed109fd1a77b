"""The rendered book as a reader meets it: playwright driving the system Chromium over the site that `make docs` writes
when Quarto is absent (tools/render_docs.py), from `file://` and from a static server on localhost, with every request
that leaves those two refused and counted.

Checked on every page: no JavaScript error, math drawn as MathML, every figure loaded, the contents panel listing the
page's sections, previous/next links in sidebar order, highlighted code, every local link and anchor resolving, API
entries with their parameter tables (against `inspect.signature`) and source links landing on the definition (against
`inspect.getsourcelines`). Search: each term lands on its chapter. Screenshots go to tests/artifacts/ (git-ignored).
Without Chromium or playwright these skip, naming what is missing, unless LIPNOTES_BROWSER=required (CI sets it).
"""
import functools
import http.server
import importlib
import inspect
import re
import threading
from pathlib import Path

import pytest
from browser_support import chromium_path_or_skip, launch
from docs_support import render_docs

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / 'tests' / 'artifacts'
PAGES = [render_docs.html_name(n) for n in render_docs.sidebar_notebooks()]
MIN_MATH = {'index.html': 3, 'core.html': 0, 'data.html': 5}      # every other page: at least 20 formulas
FIGURES = {'certificates.html': 2, 'tight_certificates.html': 1, 'frobenius.html': 1, 'power_iteration.html': 2,
           'gradient_inequality.html': 1, 'adversarial_training.html': 2, 'sharpness.html': 2, 'wgan.html': 5,
           'logit_adjustment.html': 1}
# A term a reader would type, and the chapter (and section) it must land on.
SEARCHES = [('power iteration', 'power_iteration.html'), ('LipSDP', 'tight_certificates.html'),
            ('flooding', 'sharpness.html#flooding'), ('Dherin', 'gradient_inequality.html'),
            ('logit adjustment', 'logit_adjustment.html'), ('spectral_normalize', 'power_iteration.html#spectral_normalize'),
            ('GradientNormPenalty', 'sharpness.html#gradientnormpenalty'), ('weight decay', 'frobenius.html'),
            ('certified radius', 'tight_certificates.html'), ('balanced error', 'logit_adjustment.html'),
            ('two moons', 'data.html'), ('FGM', 'adversarial_training.html')]


@pytest.fixture(scope='module')
def browser():
    chromium_path_or_skip()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope='module')
def server(site):
    "The site served over HTTP on 127.0.0.1 (a free port), as a static host would."
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()


class Visit:
    "A page opened in a fresh context: JavaScript errors, console errors and refused (off-site) requests recorded."

    def __init__(self, browser, url, allowed=('file://',), width=1400):
        self.errors, self.refused = [], []
        self.context = browser.new_context(viewport={'width': width, 'height': 1000})
        self.page = self.context.new_page()
        self.page.on('pageerror', lambda e: self.errors.append(f'pageerror: {e}'))
        self.page.on('console', lambda m: self.errors.append(f'console: {m.text}') if m.type == 'error' else None)

        def route(r):
            if r.request.url.startswith(allowed) or r.request.url.startswith('data:'): r.continue_()
            else: self.refused.append(r.request.url); r.abort()
        self.page.route('**/*', route)
        self.page.goto(url)
        self.page.wait_for_load_state('load')

    def clean(self):
        assert not self.errors, self.errors
        assert not self.refused, f'the page asked the network for {self.refused[:5]}'

    def close(self):
        self.context.close()


@functools.lru_cache(maxsize=None)
def ids_of(path):
    return set(re.findall(r'\bid="([^"]+)"', path.read_text()))


@pytest.mark.parametrize('name', PAGES)
def test_page(browser, site, name):
    v = Visit(browser, (site / name).as_uri())
    pg = v.page
    try:
        # math as MathML, drawn (a box with a size), and no TeX left in the prose
        maths = pg.eval_on_selector_all('main math', 'ms => ms.map(m => m.getBoundingClientRect().width)')
        assert len(maths) >= MIN_MATH.get(name, 20), f'{name}: {len(maths)} formulas'
        assert all(w > 0 for w in maths), f'{name}: a formula is not drawn'
        prose = pg.evaluate("""() => { const m = document.querySelector('main').cloneNode(true);
            m.querySelectorAll('pre, code, math').forEach(e => e.remove()); return m.innerText; }""")
        assert '$' not in prose, f'{name}: TeX delimiters left: ...{prose[prose.find("$") - 60:prose.find("$") + 60]}...'
        leftover = re.findall(r'\\(?:sigma|frac|sqrt|Vert|le|operatorname|begin|mathrm)\b', prose)
        assert not leftover, f'{name}: raw TeX in the text: {leftover[:5]}'
        # figures: present and decoded
        imgs = pg.eval_on_selector_all('main img', 'is => is.map(i => [i.complete, i.naturalWidth])')
        assert len(imgs) >= FIGURES.get(name, 0) and all(c and w > 0 for c, w in imgs), f'{name}: figures {imgs}'
        # the contents panel: every h2/h3 of the page, in order, visible beside the text
        heads = pg.eval_on_selector_all('main h2[id], main h3[id]', 'hs => hs.map(h => "#" + h.id)')
        toc = pg.eval_on_selector_all('#toc a', 'as => as.map(a => a.getAttribute("href"))')
        assert toc == heads, f'{name}: the contents panel lists {toc[:6]}..., the page has {heads[:6]}...'
        if heads: assert pg.is_visible('#toc') and pg.is_visible(f'#toc a[href="{heads[-1]}"]')
        # previous / next in sidebar order, and the sidebar itself
        i = PAGES.index(name)
        pager = pg.eval_on_selector_all('nav.pager a', 'as => as.map(a => [a.rel, a.getAttribute("href")])')
        want = ([['prev', PAGES[i - 1]]] if i else []) + ([['next', PAGES[i + 1]]] if i + 1 < len(PAGES) else [])
        assert pager == want, pager
        side = pg.eval_on_selector_all('ul.chapters a', 'as => as.map(a => a.getAttribute("href"))')
        assert side == PAGES and pg.get_attribute('ul.chapters a.current', 'href') == name
        # highlighted code: Python cells through pandoc's highlighter, its keyword colour applied
        if name not in ('index.html',):
            kw = pg.eval_on_selector_all('main pre.sourceCode.python span.kw',
                                         'ks => ks.map(k => [getComputedStyle(k).color, getComputedStyle(k.closest("pre")).color])')
            assert kw and all(a != b for a, b in kw), f'{name}: code is not highlighted'
        # the "open this chapter" line names the notebook and `make lab`, and the notebook downloads from the site
        line = pg.inner_text('p.open-chapter')
        nb = render_docs.sidebar_notebooks()[i]
        assert f'nbs/{nb}' in line and 'make lab' in line, line
        assert (site / pg.get_attribute('p.open-chapter a', 'href')).read_bytes() == (ROOT / 'nbs' / nb).read_bytes()
        v.clean()
    finally:
        v.close()


def test_links_and_anchors_resolve(browser, site):
    "Every local link of every page (as the browser resolves it) names a file of the site and an id in it."
    bad, seen = [], 0
    for name in PAGES + [f'source/{p.name}' for p in (site / 'source').glob('*.html')]:
        v = Visit(browser, (site / name).as_uri())
        hrefs = v.page.eval_on_selector_all('a[href]', 'as => as.map(a => a.href)')
        v.clean(); v.close()
        for href in hrefs:
            if not href.startswith('file://'): continue
            path, _, anchor = href[len('file://'):].partition('#')
            target = Path(path)
            seen += 1
            if not target.is_file() or site not in target.resolve().parents and target.resolve() != site:
                bad.append(f'{name}: {href} (no such file in the site)')
            elif anchor and target.suffix == '.html' and anchor not in ids_of(target):
                bad.append(f'{name}: {href} (no #{anchor} there)')
    assert seen > 1000 and not bad, bad[:10]


def api_entries(page):
    "[(module, name, source href, parameter-table first column)] of the API entries on a page."
    return page.evaluate("""() => [...document.querySelectorAll('main h3[id]')].flatMap(h => {
        let src = h.previousElementSibling; src = src && src.querySelector('a[href^="source/"]');
        if (!src) return [];
        let t = h.nextElementSibling;
        while (t && !['H2', 'H3', 'TABLE'].includes(t.tagName)) t = t.nextElementSibling;
        const rows = t && t.tagName === 'TABLE' && t.classList.contains('params') ?
            [...t.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim())) : [];
        return [[src.getAttribute('href'), h.textContent, rows]]; })""")


def test_api_entries(browser, site):
    """Each API entry: its source link lands on the `def`/`class` line of the imported object (inspect.getsourcelines,
    below its decorators) on the module's source page, and its parameter table lists the parameters of
    inspect.signature, in order, with their defaults and a description for each."""
    checked = tables = 0
    for name in PAGES:
        v = Visit(browser, (site / name).as_uri())
        entries = api_entries(v.page)
        v.close()
        for href, title, rows in entries:
            m = re.fullmatch(r'source/(\w+)\.py\.html#L-(\d+)', href)
            assert m, href
            obj = getattr(importlib.import_module(f'lipnotes.{m.group(1)}'), title)
            lines, start = inspect.getsourcelines(obj)       # from its first decorator; the link names the def line
            line = start + next(i for i, s in enumerate(lines) if re.match(rf'(async\s+)?(def|class)\s+{title}\b', s))
            assert int(m.group(2)) == line, f'{title}: source link to line {m.group(2)}, defined on line {line}'
            shown = re.search(rf'<span id="L-{line}">(.*?)</span>\n', (site / 'source' / f'{m.group(1)}.py.html').read_text())
            assert shown and re.search(rf'(def|class)</span> {title}\b', shown.group(1)), f'{title}: line {line} shown as {shown}'
            checked += 1
            if isinstance(obj, type) and hasattr(obj, '_fields'):
                assert [r[0] for r in rows] == list(obj._fields), (title, rows)
                assert all(r[3] for r in rows), f'{title}: a field without a description'
                tables += 1; continue
            try: sig = inspect.signature(obj)
            except ValueError: sig = None                   # a class without one (an exception type): no table
            params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                      and p.name not in ('self', 'cls')] if sig else []
            if not params:
                assert rows == [], (title, rows); continue
            got = [r for r in rows if r[0] != 'returns']
            assert [r[0] for r in got] == [p.name for p in params], (title, [r[0] for r in got])
            for r, p in zip(got, params):
                assert r[2] == ('' if p.default is p.empty else repr(p.default)), (title, r, p)
                assert r[3], f'{title}: parameter {p.name} has no description'
            tables += 1
    assert checked >= 60 and tables >= 50, (checked, tables)


def search(page, term):
    page.fill('#search', term)
    page.wait_for_selector('#search-results li')
    return page.eval_on_selector_all('#search-results a', 'as => as.map(a => a.getAttribute("href"))')


@pytest.mark.parametrize('where', ['file', 'http'])
def test_search_lands_on_the_chapter(browser, site, server, where):
    "Each term, typed into the search box of a page, puts its chapter (and section) first; Enter goes there."
    base = site.as_uri() + '/' if where == 'file' else server
    v = Visit(browser, base + 'index.html', allowed=('file://',) if where == 'file' else (server,))
    try:
        assert search(v.page, 'zzyzx quuxly') == [] and 'No match' in v.page.inner_text('#search-results')
        for term, want in SEARCHES:
            v.page.goto(base + 'core.html')
            hits = search(v.page, term)
            assert hits and hits[0].split('#')[0] == want.split('#')[0], f'{term!r}: first hit {hits[:3]}, want {want}'
            if '#' in want: assert hits[0] == want, f'{term!r}: first hit {hits[0]}, want {want}'
            v.page.press('#search', 'Enter')
            v.page.wait_for_url(re.compile(re.escape(hits[0].split('#')[0])))
            assert v.page.url.startswith(base + hits[0].split('#')[0])
            anchor = hits[0].partition('#')[2]
            if anchor:
                assert v.page.url.endswith('#' + anchor)
                box = v.page.locator(f'[id="{anchor}"]').bounding_box()
                assert box and -1 <= box['y'] < 1000, f'{term!r}: the section is not in view ({box})'
        v.clean()
    finally:
        v.close()


def test_screenshots(browser, site):
    """A chapter with its contents panel, and a search result, as Chromium draws them: tests/artifacts/ (git-ignored),
    for a person to look at."""
    import matplotlib.image as mpimg
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {'chapter_with_contents.png': ('power_iteration.html', None), 'search_result.png': ('index.html', 'LipSDP')}
    for shot, (name, term) in shots.items():
        (ARTIFACTS / shot).unlink(missing_ok=True)
        v = Visit(browser, (site / name).as_uri())
        if term: assert search(v.page, term)[0].startswith('tight_certificates.html')
        else:
            box = v.page.locator('#toc').bounding_box()
            assert box and box['x'] > 700 and box['height'] > 300, box     # the panel is on screen, to the right
        v.page.screenshot(path=str(ARTIFACTS / shot))
        v.clean(); v.close()
        img = mpimg.imread(ARTIFACTS / shot)
        assert img.shape[:2] == (1000, 1400) and img[..., :3].std() > 0.05, f'{shot} is blank'
