"""Quality control: metrics against the plate, gates, and the reviewer's report."""
