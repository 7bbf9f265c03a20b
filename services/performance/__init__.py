"""performance: joins late labels to predictions and reports live model quality."""
