"""What the commands print and write for people: summaries, HTML reports with plots, a screenshot helper."""
