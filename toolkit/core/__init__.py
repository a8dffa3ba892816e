"""metcli.core."""
