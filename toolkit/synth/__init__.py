"""metcli.synth."""
