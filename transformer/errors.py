"""The error type for problems with the user's input (files, configs, options).

The command-line programs print such an error as one line on stderr and exit with code 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong, where, and what to do."""
