"""Ray Tune sweeps over search spaces kept as data (tune/*.yaml): parsing, the sweep driver, the results."""
