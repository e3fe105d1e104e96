"""What a study found: Pareto fronts and hypervolume, queries, tables, bundle export."""
