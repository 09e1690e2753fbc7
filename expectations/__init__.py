"""Great Expectations: the suites (built by build_suites.py into gx/) and the gates that run them."""
