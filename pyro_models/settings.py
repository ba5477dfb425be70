"""``setting``: a dataclass field with the help text (and choices) its command-line flag shows."""
from dataclasses import field


def setting(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


def derived(default):
    """A field the experiment sets from the data (e.g. data_dim); it is not a command-line flag."""
    return field(default=default, metadata={"derived": True})
