"""lmkit.notebook's helpers, in a real IPython shell: skip_section turns a whole notebook section off."""

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lmkit import notebook


@pytest.fixture
def shell():
    shell = InteractiveShell.instance()
    yield shell
    notebook._SKIPPED.clear()
    InteractiveShell.clear_instance()


def test_skip_section_skips_the_marked_cells_until_switched_back_on(shell, capsys):
    shell.run_cell("from lmkit.notebook import skip_section\nskip_section('task 2', when=True, reason='no steps')")
    assert "no steps: the cells marked `# task 2` do nothing" in capsys.readouterr().out
    shell.run_cell("# task 2\nran = 'marked'")
    shell.run_cell("other = 'unmarked'")
    shell.run_cell("#task 2\nalso = 1")  # the marker as a comment, however spaced
    assert "ran" not in shell.user_ns and "also" not in shell.user_ns and shell.user_ns["other"] == "unmarked"
    shell.run_cell("skip_section('task 2', when=False)")
    shell.run_cell("# task 2\nran = 'marked'")
    assert shell.user_ns["ran"] == "marked"
    assert shell.input_transformers_post.count(notebook._skip_marked_cells) == 1  # registered once


def test_skip_section_outside_ipython_says_where_it_works():
    with pytest.raises(RuntimeError, match="works in a notebook"):
        notebook.skip_section("task 2", when=True)
