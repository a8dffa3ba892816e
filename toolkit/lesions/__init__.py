"""metcli.lesions."""
