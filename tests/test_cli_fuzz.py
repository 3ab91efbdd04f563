"""The command line's argument parsing under random argument lists (hypothesis, bounded): every
list either parses or ends in argparse's usage error (exit 2; exit 0 for help), never another
exception. Only the parser runs: no command is executed."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from influence_core.cli.main import COMMANDS, build_parser

EXAMPLES = 500  # random argument lists per run: about a second of parsing
PARSER = build_parser()


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of the parser and its sub-parsers (--dataset, --damping, ...)."""
    found = set()
    for action in parser._actions:  # argparse keeps no public list of them
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(_option_strings(sub))
    return sorted(found)


OPTIONS = _option_strings(PARSER)
NUMBERS = st.one_of(st.integers(-10**6, 10**6).map(str),  # no subnormals: the runtime flushes them
                    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False).map(repr),
                    st.sampled_from(["0", "-0", "1e309", "-1e-400", "nan", "inf", "0x10", "1_0"]))
TOKEN = st.one_of(
    st.sampled_from(sorted(COMMANDS)),
    st.sampled_from(OPTIONS),
    NUMBERS,
    st.sampled_from(["--", "-", "=", "--=", "imagefolder:", "imagefolder:/nonexistent", "ekfac",
                     "exact", "lissa", "digits", "mlp", "--dataset=", "--damping=-1"]),
    st.text(max_size=12),
)
ARGV = st.one_of(
    st.lists(TOKEN, max_size=8),
    st.tuples(st.sampled_from(sorted(COMMANDS)), st.lists(TOKEN, max_size=8))
      .map(lambda t: [t[0], *t[1]]),
)


def test_the_fuzzer_sees_the_commands_and_their_options() -> None:
    assert {"train", "unlearn"} <= set(COMMANDS)
    assert {"--dataset", "--damping", "--checkpoint", "--method"} <= set(OPTIONS)
    assert PARSER.parse_args(["train", "--dataset", "digits"]).command == "train"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ARGV)
def test_random_argument_lists_parse_or_fail_with_a_usage_error(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = PARSER.parse_args(argv)
        except SystemExit as exc:
            if exc.code == 0:  # -h / --help, possibly abbreviated
                assert out.getvalue().startswith("usage:"), argv
            else:
                assert exc.code == 2 and "usage:" in err.getvalue(), (argv, exc.code)
            return
    assert args.command in COMMANDS


def test_a_bad_value_is_a_usage_error_not_a_traceback() -> None:
    for argv in (["unlearn", "--damping", "-1"], ["train", "--epochs", "x"], ["nope"], []):
        with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()):
            PARSER.parse_args(argv)
        assert info.value.code == 2, argv
