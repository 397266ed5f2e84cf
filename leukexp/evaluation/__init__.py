"""Numbers and figures from predictions, shared by runs, CV parents and reports: metrics, statistics, plots."""
