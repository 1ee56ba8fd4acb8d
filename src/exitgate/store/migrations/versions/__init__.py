"""Migration scripts, applied in order by `down_revision`."""
