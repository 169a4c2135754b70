"""asrinterp_utils."""
