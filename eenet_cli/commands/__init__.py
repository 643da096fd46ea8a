"""One module per subcommand; importing this package registers each on
:data:`eenet_cli.app.app`."""

from eenet_cli.commands import (  # noqa: F401
    apply,
    certify,
    compact,
    dump,
    evaluate,
    export,
    fit,
    plot,
    profile,
    schema,
)
