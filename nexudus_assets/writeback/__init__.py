"""Acting on insights: command rules, checked against the catalogue, run once per record."""
