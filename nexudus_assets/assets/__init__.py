"""Raw assets (one per Nexudus entity) and the insights derived from them."""
