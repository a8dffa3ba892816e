"""metcli's command line: click commands, one module per subcommand.

Each command only parses its arguments and calls one documented library
function of :mod:`metcli`; errors, logging and progress are handled by
:mod:`metcli.cli._common`.
"""
