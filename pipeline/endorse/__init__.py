"""Endorse: audit a built image, endorse it for a VO, and the signed HEPiX image lists sites verify."""
