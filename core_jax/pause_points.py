"""Named points where a fault test stops a real process, so that its SIGKILL lands exactly there.

CORE_JAX_PAUSE_AT=POINT[,POINT...] (tests only; never set in use): a process reaching one of the named points
prints `paused at POINT` to stderr and sleeps until it is killed. The points are the hand-overs a kill could
otherwise hit only by chance: between one phase's results.json and the next phase's first checkpoint, and inside
an export. Unset, `reach` is one environment lookup.
"""

import os
import sys
import time

ENV = 'CORE_JAX_PAUSE_AT'


def reach(point: str) -> None:
  wanted = os.environ.get(ENV)
  if wanted and point in wanted.split(','):
    print(f'paused at {point}', file=sys.stderr, flush=True)
    while True:  # until the test's SIGKILL
      time.sleep(60)
