"""The ``.dac`` file: format 1 and 2 reading and writing, bit packing, DAC 1.0.0 and seed readers, and
the restricted unpickler. Knows numpy and the standard library only (and dacwatch.errors)."""
