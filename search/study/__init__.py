"""The study loop and what it needs: preparation, samplers, objectives, budgets, the monitor."""
