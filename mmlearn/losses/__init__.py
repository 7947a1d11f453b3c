"""Training losses: classification (re-weighted) and contrastive."""
