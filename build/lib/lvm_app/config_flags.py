"""Command-line flags generated from a settings dataclass, so the dataclass stays the one
place a default lives. ``tuple[int, ...]`` fields take comma-separated values."""
import argparse
import dataclasses
import typing


def _parser_for(annotation):
    optional = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if type(None) in typing.get_args(annotation) and len(optional) == 1:  # ``int | None``: None is the default
        annotation = optional[0]
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item = typing.get_args(annotation)[0]

        def comma_separated(text):
            return tuple(item(part) for part in text.split(",") if part.strip())

        comma_separated.__name__ = f"comma-separated {item.__name__}"  # argparse: "invalid <name> value"
        return comma_separated
    if annotation in (int, float, str):
        return annotation
    raise TypeError(f"no command-line parser for a field of type {annotation}")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("derived"):
            continue
        flag = "--" + f.name.replace("_", "-")
        annotation = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else "" if default is None else default
        text = f.metadata.get("help") or ""
        # an empty default is explained by the help itself ("(default: the paper's ...)")
        help_text = text if shown == "" and "default" in text else f"{text} (default: {shown})".strip()
        if annotation is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=_parser_for(annotation), default=None,
                               choices=f.metadata.get("choices"), metavar=f.name.upper(), help=help_text)


def given_fields(cls, args: argparse.Namespace) -> set[str]:
    """The names of the dataclass's fields whose flags the user gave."""
    return {f.name for f in dataclasses.fields(cls)
            if not f.metadata.get("derived") and getattr(args, f.name, None) is not None}


def dataclass_from_args(cls, args: argparse.Namespace):
    """The dataclass with its defaults, overridden by every flag the user gave."""
    return cls(**{name: getattr(args, name) for name in given_fields(cls, args)})
