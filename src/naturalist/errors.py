"""Errors a user can fix. Stage scripts print them as one line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's input or environment, phrased as one actionable line."""

    exit_code = 1


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's ``main``; a PipelineError becomes ``error: <message>`` and a non-zero exit."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
