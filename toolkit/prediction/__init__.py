"""metcli.prediction."""
