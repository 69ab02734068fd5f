"""Command-line programs: the only place that touches argv, stdout, stderr and exit codes."""
