"""The command-line apps: tfqat-train, tfqat-export and tfqat-inspect."""
