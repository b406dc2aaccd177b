"""Secondary ECUs: the ECU side (partial verification, its own A/B pair, signed version
reports) and the primary's side (hand each secondary its image, two-phase commit)."""
