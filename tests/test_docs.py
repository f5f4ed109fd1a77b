"""The rendered documentation's files, checked without a browser (tests/test_browser.py checks them in Chromium): the
README generated from the index, one page per notebook, the vendored search library, the search documents, the
Markdown copies, `llms.txt` and the source pages. The site is rendered afresh by tools/render_docs.py (tests/conftest.py).
"""
import hashlib
import importlib
import json
import re
from pathlib import Path

from docs_support import render_docs

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / 'lipnotes').glob('*.py') if not p.stem.startswith('_'))   # every module


def public_api():
    "{(module, name)} of every function and class a lipnotes module exports (its __all__; constants have no API entry)."
    mods = {m: importlib.import_module(f'lipnotes.{m}') for m in MODULES}
    return {(m, n) for m in MODULES for n in mods[m].__all__ if callable(getattr(mods[m], n))}


def test_readme_is_generated_from_index(proc_dir):
    assert (ROOT / 'README.md').read_text() == render_docs.readme_markdown(proc_dir), \
        'README.md is stale: run `make readme` after editing nbs/index.ipynb'


def test_readme_links_work_on_the_repository():
    "Every link in README.md is a web address or a path that exists in the checkout (GitHub resolves them relative to it)."
    links = re.findall(r'\]\(([^)\s]+)\)', (ROOT / 'README.md').read_text())
    assert len(links) >= 12, links
    for link in links:
        if re.match(r'https?://', link): continue
        assert not link.startswith('/'), f'README.md: {link!r} is site-absolute, which GitHub resolves to a missing page'
        assert (ROOT / link.split('#')[0]).exists(), f'README.md: {link!r} names no file in the repository'


def test_readme_links_to_site_pages_become_notebooks():
    "nbdev's site-absolute links to API entries (/power_iteration.html#spectral_normalize) become the chapter notebook."
    pages = {render_docs.html_name(n): n for n in render_docs.sidebar_notebooks()}
    md = 'see [`f`](/power_iteration.html#spectral_normalize), [Core](core.html) and [x](https://e.org/a.html#b)'
    assert render_docs.readme_links(md, pages) == \
        'see [`f`](nbs/04_power_iteration.ipynb), [Core](nbs/00_core.ipynb) and [x](https://e.org/a.html#b)'


def test_one_page_per_notebook_in_the_sidebar(site):
    names = render_docs.sidebar_notebooks()
    assert {p.name for p in site.glob('*.html')} == {render_docs.html_name(n) for n in names}
    assert set(names) == {p.name for p in (ROOT / 'nbs').glob('*.ipynb')}, 'every notebook belongs in nbs/sidebar.yml'
    assert {p.name for p in (site / 'notebooks').iterdir()} == set(names)
    assert {p.name for p in site.glob('*.html.md')} == {render_docs.html_name(n) + '.md' for n in names}


def test_vendored_search_library(site):
    "The site's minisearch.js is MiniSearch 7.2.0 as published on npm (sha256 recorded in tools/vendor), licence on top."
    readme = (ROOT / 'tools' / 'vendor' / 'minisearch' / 'README.md').read_text()
    vendored = (ROOT / 'tools' / 'vendor' / 'minisearch' / 'minisearch.js').read_bytes()
    digest = hashlib.sha256(vendored).hexdigest()
    assert digest == render_docs.MINISEARCH_SHA256 and f'`{digest}`' in readme
    shipped = (site / 'minisearch.js').read_bytes()
    assert shipped.endswith(vendored) and b'MIT licence' in shipped[:200] and b'Luca Ongaro' in shipped[:2000]


def search_documents(site):
    js = (site / 'search-data.js').read_text()
    return json.loads(re.search(r'window\.LIPNOTES_SEARCH = (.*);\n$', js, re.S).group(1))


def test_search_documents_cover_the_book(site):
    """One document per section of every page (its heading as title, prose without code, math or figures) and one per
    API entry with its name in the `api` field; ids unique and each pointing at an id on its page."""
    docs = search_documents(site)
    assert len({d['id'] for d in docs}) == len(docs)
    assert {d['page'] for d in docs} == {render_docs.html_name(n) for n in render_docs.sidebar_notebooks()}
    for d in docs:
        if d['anchor']: assert f'id="{d["anchor"]}"' in (site / d['page']).read_text(), d['id']
        tag = re.search(r'</?(p|span|div|a|code|em|table|td|math|img|h\d)\b[^>]*>', d['text'])
        assert 'data:image' not in d['text'] and not tag, (d['id'], tag)
    api = {d['api'] for d in docs if d['api']}
    assert {n for _, n in public_api()} <= api, {n for _, n in public_api()} - api
    heads = {(d['page'], d['title']) for d in docs}
    assert ('power_iteration.html', 'The iteration') in heads and ('frobenius.html', 'Summary') in heads


def test_llms_txt(site):
    """llms.txt (llmstxt.org, as nbdev 3 sites publish it): a title, a summary, every chapter linked to its Markdown copy
    and every exported name linked to its API entry, with the first line of its docstring."""
    txt = (site / 'llms.txt').read_text()
    assert txt.startswith('# lipnotes\n\n> ') and '\n## Chapters\n' in txt and '\n## API\n' in txt
    chapters = re.findall(r'^- \[[^\]]+\]\(([\w.]+\.html\.md)\): \S', txt, re.M)
    assert chapters == [render_docs.html_name(n) + '.md' for n in render_docs.sidebar_notebooks()]
    entries = re.findall(r'^- \[lipnotes\.(\w+)\.(\w+)\]\(([\w.]+\.html)#([\w-]+)\): (.*)$', txt, re.M)
    assert {(m, n) for m, n, *_ in entries} == public_api()
    for m, n, page, anchor, doc in entries:
        assert f'<h3 id="{anchor}">{n}</h3>' in (site / page).read_text(), (n, page)
        obj = getattr(importlib.import_module(f'lipnotes.{m}'), n)
        assert doc == obj.__doc__.strip().splitlines()[0], n
    for link in re.findall(r'\]\(([^)#\s]+)', txt):
        assert (site / link).exists(), link


def test_markdown_copies(site):
    """Each page as Markdown: its title, math left as TeX, figures named rather than embedded, links to the other copies,
    none of nbdev's HTML attributes."""
    for nb in render_docs.sidebar_notebooks():
        page = render_docs.html_name(nb)
        md, html_ = (site / (page + '.md')).read_text(), (site / page).read_text()
        title = re.search(r'<h1 class="title">(.*?)</h1>', html_).group(1)
        assert md.startswith(f'# {title}\n'), page
        assert 'data:image' not in md and md.count('[figure]') == html_.count('<figure class="cell-figure">'), page
        assert not re.search(r'\]\((?!https?:|source/)[^)]*\.html(#[^)]*)?\)', md), page   # to the .md copies, or the source
        assert '{target=' not in md and 'AUTOGENERATED' not in md, page
        if html_.count('<math') > 5: assert '$' in md and '\\' in md, page


def test_source_pages(site):
    "One page per exported module, every line anchored (#L-<n>), the text equal to the module's."
    import html
    for m in MODULES:
        page = (site / 'source' / f'{m}.py.html').read_text()
        src = (ROOT / 'lipnotes' / f'{m}.py').read_text().rstrip('\n').split('\n')
        assert len(re.findall(r'<span id="L-\d+">', page)) == len(src), m
        shown = re.findall(r'<span id="L-(\d+)"><a href="#L-\d+"[^>]*></a>(.*?)</span>(?:\n|</code>)', page)
        assert len(shown) == len(src)
        for n, text in shown[:: max(1, len(shown) // 40)]:
            assert html.unescape(re.sub(r'<[^>]+>', '', text)) == src[int(n) - 1], (m, n)
