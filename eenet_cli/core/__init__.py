"""Pure numpy core: no file I/O, no printing, no torch."""
