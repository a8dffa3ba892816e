"""metcli.segmentation."""
