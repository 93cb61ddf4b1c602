"""Kernels and backend plugins (imported as ``qdit4sr_export.plugins``)."""
