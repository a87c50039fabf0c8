"""lmkit's log messages reach a person as the right kind of output (tests/test_pipeline.py and
tests/test_browser.py check the same in a real kernel, JupyterLab and an exported page)."""

import logging

import pytest

from lmkit.logs import show_logs


@pytest.fixture
def lmkit_logger():
    logger = logging.getLogger("lmkit")
    before = (list(logger.handlers), logger.level)
    yield logger
    logger.handlers[:], logger.level = before


def test_info_goes_to_stdout_as_a_plain_line_and_warnings_to_stderr_once_however_often_set_up(lmkit_logger, capsys):
    show_logs()
    show_logs()  # a notebook's setup cell run twice: still one line per message
    logging.getLogger("lmkit.cleaning").info("cleaned %d documents", 3)
    logging.getLogger("lmkit.dedup").warning("%d documents have no letters", 2)
    logging.getLogger("lmkit.dedup").debug("not shown below INFO")
    out, err = capsys.readouterr()
    assert out == "cleaned 3 documents\n"
    assert err == "WARNING lmkit.dedup: 2 documents have no letters\n"


def test_on_the_command_line_every_message_goes_to_stderr(lmkit_logger, capsys):
    show_logs(info_stream="stderr")
    logging.getLogger("lmkit.trainer").info("resumed at step 40")
    out, err = capsys.readouterr()
    assert out == "" and err == "resumed at step 40\n"


def test_other_libraries_are_left_alone(lmkit_logger, capsys):
    root = (list(logging.getLogger().handlers), logging.getLogger().level)
    show_logs()
    logging.getLogger("papermill").info("Input Notebook: x.ipynb")
    assert capsys.readouterr().out == ""
    assert (list(logging.getLogger().handlers), logging.getLogger().level) == root


def test_an_unknown_stream_is_refused(lmkit_logger):
    with pytest.raises(ValueError, match="info_stream='stdin' must be 'stdout' or 'stderr'"):
        show_logs(info_stream="stdin")
