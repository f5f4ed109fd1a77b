"""The rendered book as a reader meets it: playwright driving the system Chromium over the site that `make docs` writes
when Quarto is absent (tools/render_docs.py), from `file://` and from a static server on localhost, with every request
that leaves those two refused and counted.

Checked on every page: no JavaScript error, nothing loaded from outside the site, math drawn as MathML, every figure
the notebook stores, the contents panel listing the page's sections (beside the text, or folded above it in a narrow
window, where nothing scrolls sideways), previous/next links in sidebar order, highlighted code, every local link and
anchor resolving (links to API names at their entries), API entries whose parameter tables match `inspect.signature`
(names, types, defaults) and the source comments (descriptions), and source links landing on the definition
(`inspect.getsourcelines`). Search: each term, English or Chinese, lands on its chapter; results are text, never markup;
Enter, the arrow keys, Escape, a click and Back work. Screenshots go to tests/artifacts/ (git-ignored).
Without Chromium or playwright these skip, naming what is missing, unless LIPNOTES_BROWSER=required (CI sets it).
"""
import functools
import http.server
import importlib
import inspect
import json
import re
import threading
from pathlib import Path
from urllib.parse import unquote

import pytest
from browser_support import chromium_path_or_skip, launch
from docs_support import render_docs

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / 'tests' / 'artifacts'
PAGES = [render_docs.html_name(n) for n in render_docs.sidebar_notebooks()]
MIN_MATH = {'index.html': 3, 'core.html': 0, 'data.html': 5}      # every other page: at least 20 formulas


def figures_in(nb):
    "The figures (image outputs of any kind) a chapter's notebook stores: every one must appear on its page."
    cells = json.loads((ROOT / 'nbs' / nb).read_text())['cells']
    return sum(any(k.startswith('image/') for k in o.get('data', {}))
               for c in cells if c['cell_type'] == 'code' for o in c.get('outputs', []))


# A term a reader would type, and the chapter (and section) it must land on.
SEARCHES = [('power iteration', 'power_iteration.html'), ('LipSDP', 'tight_certificates.html'),
            ('flooding', 'sharpness.html#flooding'), ('Dherin', 'gradient_inequality.html'),
            ('logit adjustment', 'logit_adjustment.html'), ('spectral_normalize', 'power_iteration.html#spectral_normalize'),
            ('GradientNormPenalty', 'sharpness.html#gradientnormpenalty'), ('weight decay', 'frobenius.html'),
            ('certified radius', 'tight_certificates.html'), ('balanced error', 'logit_adjustment.html'),
            ('two moons', 'data.html'), ('FGM', 'adversarial_training.html'),
            ('The L constraint', 'lipschitz.html'), ('Certificates', 'certificates.html'),     # chapter titles
            ('对抗训练', 'adversarial_training.html'), ('梯度惩罚', 'adversarial_training.html'),  # words inside Chinese quotes
            ('谱半径', 'frobenius.html')]


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
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()


class Visit:
    """A page opened in a fresh context: JavaScript errors, console errors and refused requests recorded; a request is
    refused unless its address starts with one of `allowed` (the site's folder or its server)."""

    def __init__(self, browser, url, allowed, width=1400):
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


def local(site):
    "The only addresses a page of the site read from file:// may load: the site's own folder."
    return (site.as_uri() + '/',)


@functools.lru_cache(maxsize=None)
def ids_of(path):
    return set(re.findall(r'\bid="([^"]+)"', path.read_text()))


@pytest.mark.parametrize('name', PAGES)
def test_page(browser, site, name):
    v = Visit(browser, (site / name).as_uri(), local(site))
    pg = v.page
    try:
        # math as MathML, drawn (a box with a size), and no TeX left in the prose
        maths = pg.eval_on_selector_all('main math', """ms => ms.filter(m => !m.closest('details.toc-inline')).map(m => {
            const c = m.cloneNode(true);
            c.querySelectorAll('annotation').forEach(a => a.remove());
            return [m.getBoundingClientRect().width, c.querySelectorAll('mi, mn, mo, mtext').length, c.textContent]; })""")
        assert len(maths) >= MIN_MATH.get(name, 20), f'{name}: {len(maths)} formulas'
        assert all(w > 0 for w, _, _ in maths), f'{name}: a formula is not drawn'
        # MathML, not TeX in a MathML box: token elements, and no TeX command left in their text
        assert all(n > 0 and not re.search(r'\\[A-Za-z]', t) for _, n, t in maths), \
            [t for _, n, t in maths if not n or re.search(r'\\[A-Za-z]', t)][:3]
        prose = pg.evaluate("""() => { const m = document.querySelector('main').cloneNode(true);
            m.querySelectorAll('pre, code, math').forEach(e => e.remove()); return m.innerText; }""")
        assert '$' not in prose, f'{name}: TeX delimiters left: ...{prose[prose.find("$") - 60:prose.find("$") + 60]}...'
        leftover = re.findall(r'\\(?:sigma|frac|sqrt|Vert|le|operatorname|begin|mathrm)\b', prose)
        assert not leftover, f'{name}: raw TeX in the text: {leftover[:5]}'
        # figures: present and decoded
        imgs = pg.eval_on_selector_all('main img', 'is => is.map(i => [i.complete, i.naturalWidth])')
        nb = render_docs.sidebar_notebooks()[PAGES.index(name)]
        assert len(imgs) == figures_in(nb) and all(c and w > 0 for c, w in imgs), f'{name}: figures {imgs}'
        # the contents panel: every h2/h3 of the page, in order, visible beside the text
        heads = pg.eval_on_selector_all('main h2[id], main h3[id]',
                                        'hs => hs.map(h => ["#" + h.id, h.textContent.replace(/\\s+/g, " ").trim()])')
        toc = pg.eval_on_selector_all('#toc a', 'as => as.map(a => [a.getAttribute("href"), '
                                                'a.textContent.replace(/\\s+/g, " ").trim()])')
        assert toc == heads, f'{name}: the contents panel lists {toc[:4]}..., the page has {heads[:4]}...'
        if heads: assert pg.is_visible('#toc') and pg.is_visible(f'#toc a[href="{heads[-1][0]}"]')
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
        assert f'nbs/{nb}' in line and 'make lab' in line, line
        assert (site / pg.get_attribute('p.open-chapter a', 'href')).read_bytes() == (ROOT / 'nbs' / nb).read_bytes()
        v.clean()
    finally:
        v.close()


def entry_ids(path):
    "{API name: its entry's id} on a page (an entry: a source link, then the name's h3)."
    return dict((n, i) for i, n in re.findall(r'>source</a></p>\n<h3 id="([^"]+)">(\w+)</h3>', path.read_text()))


def test_links_and_anchors_resolve(browser, site):
    """Every local link of every page (as the browser resolves it) names a file of the site and an id in it; a link
    whose text is an API name in code, to a page with that name's entry, lands on the entry (not on a section that
    took the same id first)."""
    bad, seen, api_links = [], 0, 0
    for name in PAGES + [f'source/{p.name}' for p in (site / 'source').glob('*.html')]:
        v = Visit(browser, (site / name).as_uri(), local(site))
        links = v.page.eval_on_selector_all('a[href]', 'as => as.map(a => [a.href, a.innerHTML])')
        v.clean(); v.close()
        for href, inner in links:
            code = re.fullmatch(r'<code>(\w+)</code>', inner)
            if code and href.startswith('file://') and '#' in href:
                target, anchor = map(unquote, href[len('file://'):].split('#', 1))
                want = entry_ids(Path(target)).get(code.group(1)) if Path(target).suffix == '.html' else None
                if want:
                    api_links += 1
                    if anchor != want: bad.append(f'{name}: {href} should be #{want}')
            if not href.startswith('file://'): continue
            path, _, anchor = map(unquote, href[len('file://'):].partition('#'))
            target = Path(path)
            seen += 1
            if not target.is_file() or site not in target.resolve().parents and target.resolve() != site:
                bad.append(f'{name}: {href} (no such file in the site)')
            elif anchor and target.suffix == '.html' and anchor not in ids_of(target):
                bad.append(f'{name}: {href} (no #{anchor} there)')
    assert seen > 1000 and api_links > 100 and not bad, (seen, api_links, bad[:10])


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


def shown_type(text, obj):
    "The annotation a Type cell names, evaluated where the object is defined (torch and typing names in scope too)."
    import typing
    import torch
    scope = {**vars(typing), 'torch': torch, **vars(inspect.getmodule(obj))}
    return eval(text, scope) if text else inspect.Parameter.empty


def source_comment(fn, name):
    "The comment on the line of parameter `name` (`*name`, `**name`) in `fn`'s source, backticks dropped; '' if none."
    src = inspect.getsource(fn)
    src = src[src.index('('):]                             # the parameters, from the definition's parenthesis
    m = re.search(rf'(?<![\w.])\**{name}\b[^#\n]*#\s*(.*)$', src, re.M)
    return re.sub(r'\s+', ' ', m.group(1).replace('`', '')).strip() if m else ''


def test_api_entries(browser, site):
    """Each API entry: its source link lands on the `def`/`class` line of the imported object (inspect.getsourcelines,
    below its decorators) on the module's source page; its parameter table lists the parameters of inspect.signature
    in order (a *args/**kwargs where its source line carries a comment), each with the type it is annotated with (the
    cell evaluated in the module's scope equals the annotation; blank where there is none), its default, and the
    comment on its line in the source; a NamedTuple's table lists its fields with their comments."""
    checked = tables = 0
    for name in PAGES:
        v = Visit(browser, (site / name).as_uri(), local(site))
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
            rows = [[re.sub(r'\s+', ' ', c) for c in r] for r in rows]
            fields = getattr(obj, '_fields', None)
            if fields is not None:                           # a NamedTuple: its fields, unless it writes its own __new__
                try: own = bool(inspect.getsource(obj.__new__))
                except (OSError, TypeError): own = False     # namedtuple's generated __new__ has no source
                if not own:
                    src = inspect.getsource(obj)
                    assert [r[0] for r in rows] == list(fields), (title, rows)
                    for r in rows:
                        want = re.search(rf'^\s+{r[0]}\s*:[^#\n]*#\s*(.*)$', src, re.M)
                        assert want and r[3] == re.sub(r'\s+', ' ', want.group(1).replace('`', '')).strip(), (title, r)
                        assert shown_type(r[1], obj) == obj.__annotations__[r[0]], (title, r)
                    tables += 1; continue
                obj = obj.__new__
            try: sig = inspect.signature(obj)
            except ValueError: sig = None                   # a class without one (an exception type): no table
            fn = obj.__init__ if isinstance(obj, type) else obj
            params = [p for p in sig.parameters.values() if p.name not in ('self', 'cls')
                      and (p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or source_comment(fn, p.name))] if sig else []
            if not params:
                assert rows == [], (title, rows); continue
            got = [r for r in rows if r[0] != 'returns']
            star = {inspect.Parameter.VAR_POSITIONAL: '*', inspect.Parameter.VAR_KEYWORD: '**'}
            assert [r[0] for r in got] == [star.get(p.kind, '') + p.name for p in params], (title, [r[0] for r in got])
            for r, p in zip(got, params):
                assert r[2] == ('' if p.default is p.empty else repr(p.default)), (title, r, p)
                assert shown_type(r[1], obj) == p.annotation, (title, r, p.annotation)
                assert r[3] and r[3] == source_comment(fn, p.name), (title, r, source_comment(fn, p.name))
            if sig.return_annotation is not sig.empty:
                assert rows[-1][0] == 'returns' and shown_type(rows[-1][1], obj) == sig.return_annotation, (title, rows[-1])
            tables += 1
    assert checked >= 60 and tables >= 55, (checked, tables)


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


def test_search_keyboard_mouse_and_markup(browser, site):
    """Results are text: a snippet quoting `module.<name>` shows it, with no element made of it. ArrowDown then Enter
    opens the first result, a click the second, Back returns, Escape empties the box and the list; no error."""
    v = Visit(browser, (site / 'core.html').as_uri(), local(site))
    pg = v.page
    try:
        search(pg, 'module.<name>')
        assert pg.eval_on_selector_all('#search-results .snippet *', 'es => es.length') == 0
        assert '<name>' in pg.inner_text('#search-results')
        pg.press('#search', 'Escape')
        assert pg.input_value('#search') == '' and pg.inner_html('#search-results') == ''
        hits = search(pg, 'spectral_normalize')
        pg.press('#search', 'ArrowDown')
        assert pg.evaluate('document.activeElement.getAttribute("href")') == hits[0]
        pg.keyboard.press('ArrowDown')
        assert pg.evaluate('document.activeElement.getAttribute("href")') == hits[1]
        pg.keyboard.press('ArrowUp'); pg.keyboard.press('Enter')
        pg.wait_for_url('**/' + hits[0])
        before, hits = pg.url, search(pg, 'balanced error')
        pg.click(f'#search-results a[href="{hits[1]}"]')
        pg.wait_for_url('**/' + hits[1])
        pg.go_back()
        pg.wait_for_url(before)
        assert pg.url.endswith('power_iteration.html#spectral_normalize')
        v.clean()
    finally:
        v.close()


@pytest.mark.parametrize('name', ['index.html', 'lipschitz.html', 'power_iteration.html', 'tight_certificates.html',
                                  'wgan.html', 'sharpness.html'])
def test_narrow_window(browser, site, name):
    "At 400 px wide nothing scrolls sideways, and the contents panel is folded above the text with every section."
    v = Visit(browser, (site / name).as_uri(), local(site), width=400)
    pg = v.page
    try:
        width, client = pg.evaluate('[document.documentElement.scrollWidth, document.documentElement.clientWidth]')
        assert width <= client, f'{name}: {width} px wide in a {client} px window'
        assert not pg.is_visible('#toc')
        heads = pg.eval_on_selector_all('main h2[id], main h3[id]', 'hs => hs.map(h => "#" + h.id)')
        pg.click('details.toc-inline summary')
        inline = pg.eval_on_selector_all('details.toc-inline a', 'as => as.map(a => a.getAttribute("href"))')
        assert inline == heads and pg.is_visible(f'details.toc-inline a[href="{heads[-1]}"]')
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
        v = Visit(browser, (site / name).as_uri(), local(site))
        if term: assert search(v.page, term)[0].startswith('tight_certificates.html')
        else:
            box = v.page.locator('#toc').bounding_box()
            assert box and box['x'] > 700 and box['height'] > 300, box     # the panel is on screen, to the right
        v.page.screenshot(path=str(ARTIFACTS / shot))
        v.clean(); v.close()
        img = mpimg.imread(ARTIFACTS / shot)
        assert img.shape[:2] == (1000, 1400) and img[..., :3].std() > 0.05, f'{shot} is blank'
