"""Benchmark helpers for the pacs server: synthetic CT data and reference DICOM nodes."""
