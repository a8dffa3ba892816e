"""metcli.imaging."""
