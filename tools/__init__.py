"""Command-line tools of pfc_mx (each module has a main(argv=None) -> int)."""
