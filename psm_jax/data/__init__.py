"""Input pipeline: sources, transforms, free-form masks (paper Sec. 4.1, MAT masks)."""
