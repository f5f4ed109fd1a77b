"""tools/render_docs.py, the renderer `make docs` uses when Quarto is absent, imported for the documentation suites."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('render_docs', ROOT / 'tools' / 'render_docs.py')
render_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_docs)
