"""Fixtures shared by the documentation suites (tests/test_docs.py, tests/test_browser.py): the site is rendered once per
session by tools/render_docs.py, the renderer `make docs` uses when Quarto is absent, into a temporary folder."""
import pytest
from docs_support import render_docs


@pytest.fixture(scope='session')
def proc_dir():
    "The notebooks as nbdev-proc-nbs processes them (_proc/)."
    return render_docs.proc_notebooks()


@pytest.fixture(scope='session')
def site(proc_dir, tmp_path_factory):
    "The rendered site's folder."
    out = tmp_path_factory.mktemp('site')
    render_docs.render_site(out, proc_dir)
    return out
