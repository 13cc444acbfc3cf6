"""dicom-probe: a passive DICOM network monitor (PS3.8 Upper Layer, PS3.7 DIMSE) for SPAN/TAP ports."""

__version__ = "0.1.0"
