"""Pure readers and writers of the formats the pipeline exchanges: no settings, no I/O beyond the
streams they are given. Stages and the catalogue import formats; formats import neither."""
