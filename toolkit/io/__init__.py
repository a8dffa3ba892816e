"""metcli.io."""
