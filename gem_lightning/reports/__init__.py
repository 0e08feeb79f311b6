"""Human-readable reports (figures, CSV, Markdown) built from evaluation results, and the Grad-CAM maps they show."""
