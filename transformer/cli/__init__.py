"""Command-line programs: the only place that touches argv, stdout, stderr and exit codes.

Every program imports this package before it imports torch: the one moment at which the
way torch's OpenMP threads wait for work can still be chosen (the runtime reads it once,
when torch loads it). Unless OMP_WAIT_POLICY is set, it is PASSIVE: a thread waiting for
the others sleeps instead of spinning. On a CPU another program keeps busy, the spinning
takes the very cores the other threads need (README: "Threads on a shared machine").
The library itself (`import transformer.model`) sets nothing.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
