"""The trading analytics: the daily rollup the writer keeps, and the figures computed from it."""
