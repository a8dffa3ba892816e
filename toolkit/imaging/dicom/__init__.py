"""metcli.imaging.dicom: DICOM series read in Hounsfield units, imported as NIfTI, and written."""
