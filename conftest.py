"""pytest configuration shared by tests/ and the nbval run over nbs/.

nbdev-clean stores notebooks with `execution_count: null` but keeps their outputs; nbval would then fail every such cell
with "Unrun reference cell has outputs". We give those cells a count so that nbval compares their outputs instead.
Cells marked `#| slow` (the project's nbdev test flag) and tests marked `@pytest.mark.slow` are skipped unless
LIPNOTES_SLOW=1; a slow cell must not define names that later cells use.
"""
import os, re
import pytest

@pytest.fixture
def rejects():
    """`rejects(call, exc, fname, arg)`: call() raises exactly `exc`, whose message starts with the public function's name
    `fname` and names the argument `arg` (the bad-input suites' one check); returns the message."""
    def check(call, exc, fname, arg):
        with pytest.raises(exc) as e:
            call()
        msg = str(e.value)
        assert type(e.value) is exc, (type(e.value), msg)
        assert msg.startswith(f"{fname}: "), msg
        assert arg in msg, msg
        return msg
    return check


_SLOW = re.compile(r"^\s*#\|\s*slow\b", re.M)


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("LIPNOTES_SLOW") == "1"
    for item in items:
        if not run_slow and item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.skip(reason="slow test; set LIPNOTES_SLOW=1 to run it"))
            continue
        cell = getattr(item, "cell", None)  # only nbval's notebook-cell items have one
        if cell is None or getattr(cell, "cell_type", None) != "code":
            continue
        if cell.get("outputs") and cell.get("execution_count") is None:
            cell["execution_count"] = 1
        if not run_slow and _SLOW.search(cell.source):
            item.add_marker(pytest.mark.skip(reason="#| slow cell; set LIPNOTES_SLOW=1 to run it"))
