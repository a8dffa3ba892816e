"""metcli.imaging.dicom."""
