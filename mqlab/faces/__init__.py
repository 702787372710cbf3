"""What a person uses: the `mqlab` command line and the Textual TUI, over the lab."""
