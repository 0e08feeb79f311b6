"""Human-readable reports (figures, CSV, Markdown) built from evaluation results."""
