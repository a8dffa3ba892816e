"""metcli.cnn."""
