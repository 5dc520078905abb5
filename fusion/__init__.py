"""Stream fusion: adaptive weighted fusion by linear programming (STILT eqs. 4-9) and baselines."""
