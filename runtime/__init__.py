"""Runtime that runs engine sets (imported as ``qdit4sr_export.runtime``)."""
