"""metcli.evaluation."""
