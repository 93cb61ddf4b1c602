"""Graph passes of the compiler (imported as ``qdit4sr_export.passes``)."""
