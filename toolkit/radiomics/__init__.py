"""metcli.radiomics."""
