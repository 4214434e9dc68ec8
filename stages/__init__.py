"""What pvr-pipe does: one module per DVC stage, plus the `pvr-pipe` command line."""
