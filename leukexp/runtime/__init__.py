"""Process-wide set-up shared by every entry point: threads, quiet libraries, seeds, signals, secret redaction."""
